//! mailgate: one binary for the MMTP, IMMP and XHMTP front-ends over one durable store.
//!
//! The binary is `src/main.rs`; everything lives in this library so end-to-end tests can build
//! the same program under another name.

mod admin;
mod archive;
mod bench;
mod client_cmd;
mod commands;
mod config;
mod conformance;
mod dns;
mod dns_records;
mod files;
mod listener;
mod relay;
mod routing;
mod serve;
pub mod tls;
mod trust;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mailgate",
    version,
    about = "A multi-protocol mail gateway (MMTP, IMMP, XHMTP)"
)]
struct Cli {
    /// Configuration file (TOML). Without one, the built-in defaults run locally.
    #[arg(long, global = true, env = "MAILGATE_CONFIG")]
    config: Option<PathBuf>,
    /// The defaults the configuration file is laid over: `embedded` (./data, 127.0.0.1) or
    /// `container` (/var/lib/mailgate, every interface; the image sets it).
    #[arg(
        long,
        global = true,
        env = "MAILGATE_DEFAULTS",
        value_enum,
        default_value = "embedded"
    )]
    defaults: config::Defaults,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: every enabled front-end, the relay workers and the admin endpoint.
    Serve,
    /// Validate the configuration and print the effective settings.
    CheckConfig,
    /// Manage local accounts.
    User {
        #[command(subcommand)]
        action: commands::UserAction,
    },
    /// Inspect and manage the outbound relay queue (safe while the gateway runs).
    Queue {
        #[command(subcommand)]
        action: commands::QueueAction,
    },
    /// Move the store to another back-end (SQLite ↔ PostgreSQL).
    Store {
        #[command(subcommand)]
        action: commands::StoreAction,
    },
    /// DKIM keys for outbound SMTP mail.
    Dkim {
        #[command(subcommand)]
        action: commands::DkimAction,
    },
    /// Print the DNS records to publish for a local domain (zone-file syntax): MX, SPF, DKIM
    /// and DMARC for SMTP, SRV for each enabled protocol and for submission, TXT
    /// `_prefix._xhmtp`, the host's A/AAAA.
    DnsRecords(dns_records::DnsArgs),
    /// Query DNS ([dns] servers) for every record `dns-records` prints and say what is
    /// missing or wrong (exit 0 when everything is published).
    CheckDns(dns_records::DnsArgs),
    /// Write a consistent copy of the store to PATH (safe while the gateway runs); with
    /// --archive (or a PATH ending in .tar), a tar archive of everything a restore needs: the
    /// database, the site's keys, tls/ and dkim/.
    Backup {
        /// Destination file; must not exist.
        path: PathBuf,
        /// Write a tar archive of the database and the data directory's key files.
        #[arg(long)]
        archive: bool,
    },
    /// Restore a `backup --archive` into the configured data directory, which must not hold
    /// those files yet (the gateway stopped).
    Restore {
        /// The archive.
        archive: PathBuf,
    },
    /// Ask the admin endpoint whether the gateway is healthy (exit 0 when it is).
    Health {
        /// Admin base URL (default: from the config's admin.listen).
        #[arg(long)]
        url: Option<String>,
    },
    /// Bounded load generators that print throughput and latency percentiles.
    Bench {
        #[command(subcommand)]
        target: bench::BenchTarget,
    },
    /// Send one message with a protocol's client.
    Send(client_cmd::SendArgs),
    /// Fetch messages with a protocol's client.
    Receive(client_cmd::ReceiveArgs),
    /// Run a protocol's conformance suite against any server.
    Conformance(conformance::ConformanceArgs),
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
}

/// Parse the command line and run `mailgate`; the whole program behind `main`.
pub fn main_entry() -> std::process::ExitCode {
    let cli = Cli::parse();
    files::private_umask();
    if !matches!(cli.command, Command::Serve) {
        // A command whose output goes into `| head` ends quietly when the reader leaves, as
        // Unix tools do, instead of panicking in println!. (Sockets write with MSG_NOSIGNAL,
        // so only the standard streams are concerned; `serve` keeps ignoring SIGPIPE.)
        #[cfg(unix)]
        // SAFETY: restoring the default action of a signal has no other effect.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailgate: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailgate: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    let load = || config::Config::load(cli.config.as_deref(), cli.defaults);
    match cli.command {
        Command::Serve => serve::run(load()?).await.map(|()| ok),
        Command::CheckConfig => {
            let c = load()?;
            print!("{}", c.to_toml()?);
            let (errors, notes) = tls::check_files(&c);
            for note in notes {
                eprintln!("mailgate: note: {note}");
            }
            if !errors.is_empty() {
                anyhow::bail!(
                    "the configuration names bad files:\n  {}",
                    errors.join("\n  ")
                );
            }
            eprintln!("mailgate: configuration is valid");
            Ok(ok)
        }
        Command::User { action } => commands::user(&load()?, action).await.map(|()| ok),
        Command::Queue { action } => commands::queue(&load()?, action).await.map(|()| ok),
        Command::Store { action } => commands::store(action).await.map(|()| ok),
        Command::Dkim { action } => commands::dkim(&load()?, action).map(|()| ok),
        Command::DnsRecords(args) => dns_records::print(&load()?, &args).map(|()| ok),
        Command::CheckDns(args) => dns_records::check(&load()?, &args).await,
        Command::Backup { path, archive } => {
            let archive = archive || path.extension().is_some_and(|e| e == "tar");
            commands::backup(&load()?, &path, archive)
                .await
                .map(|()| ok)
        }
        Command::Restore { archive } => archive::restore(&load()?, &archive).map(|()| ok),
        Command::Health { url } => commands::health(&load()?, url).await,
        Command::Bench { target } => bench::run(target).await.map(|()| ok),
        Command::Conformance(args) => conformance::run(args).await,
        Command::Send(args) => client_cmd::send(&load()?, args).await.map(|()| ok),
        Command::Receive(args) => client_cmd::receive(&load()?, args).await.map(|()| ok),
    }
}

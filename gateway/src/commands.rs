//! Operator commands that work on the store directly (safe while the gateway runs: SQLite
//! serialises writers across processes) or talk to the admin endpoint.

use crate::config::Config;
use crate::serve::open_core;
use anyhow::{bail, Context};
use clap::Subcommand;
use mailgate_core::store::{migrate_store, StoreLocation};
use mailgate_core::Address;
use std::io::{BufRead, IsTerminal};
use std::path::Path;

/// `mailgate user …`
#[derive(Subcommand)]
pub enum UserAction {
    /// Create an account (any address family: alice@d, (alice)%(d), helpdesk/alice@d).
    Add {
        /// The account's address.
        address: String,
        /// Read the password from the first line of standard input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts.
    List,
    /// Change an account's password.
    Passwd {
        /// The account's address.
        address: String,
        /// Read the password from the first line of standard input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove an account and its mailbox entries.
    Remove {
        /// The account's address.
        address: String,
    },
    /// TMTP nodes (devices) of an account.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
}

/// `mailgate user node …`
#[derive(Subcommand)]
pub enum NodeAction {
    /// Give an existing account a TMTP node (making it a member with a permanent uid when it
    /// is not one yet); prints the uid and the node's secret, which is shown only this once.
    Add {
        /// The account's address.
        address: String,
        /// A label for the device (`laptop`, `phone`).
        label: String,
    },
    /// Who outside the site may reach the account's TMTP nodes: `members` (the default: only
    /// TMTP members of this gateway), `local` (any account of its domains) or `anyone`.
    Reach {
        /// The account's address.
        address: String,
        /// `members`, `local` or `anyone`.
        who: String,
    },
}

fn parse_address(s: &str) -> anyhow::Result<Address> {
    let a = Address::parse_any(s).with_context(|| format!("{s:?} is not a valid address"))?;
    if a.folder.is_some() {
        bail!("{s:?}: an account address has no +folder");
    }
    Ok(a)
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let pw = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("no terminal for a password prompt: use --password-stdin");
        }
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Repeat password: ")?;
        if first != again {
            bail!("passwords do not match");
        }
        first
    };
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

/// Run a `user` action.
pub async fn user(config: &Config, action: UserAction) -> anyhow::Result<()> {
    let core = open_core(config).await?;
    let result = match action {
        UserAction::Add {
            address,
            password_stdin,
        } => {
            let a = parse_address(&address)?;
            let pw = read_password(password_stdin)?;
            let acct = core.add_account(&a, &pw).await?;
            println!("created {}", acct.address);
            Ok(())
        }
        UserAction::List => {
            for a in core.store.accounts().await? {
                let mmtp = a.address.to_mmtp().unwrap_or_else(|_| "-".into());
                println!("{}\t{}", a.address, mmtp);
            }
            Ok(())
        }
        UserAction::Passwd {
            address,
            password_stdin,
        } => {
            let a = parse_address(&address)?;
            let pw = read_password(password_stdin)?;
            core.set_password(&a, &pw).await?;
            println!("password changed for {a}");
            Ok(())
        }
        UserAction::Node { action } => node(&core, action).await,
        UserAction::Remove { address } => {
            let a = parse_address(&address)?;
            if core.store.remove_account(&a).await? {
                println!("removed {a}");
                Ok(())
            } else {
                Err(anyhow::anyhow!("no account {a}"))
            }
        }
    };
    core.store.close().await?;
    result
}

async fn node(core: &mailgate_core::Core, action: NodeAction) -> anyhow::Result<()> {
    match action {
        NodeAction::Add { address, label } => {
            let a = parse_address(&address)?;
            let creds = mailgate_tmtp::TmtpServer::add_node(core, &a, &label).await?;
            println!("uid\t{}\nnode\t{}", creds.uid, creds.node);
        }
        NodeAction::Reach { address, who } => {
            let a = parse_address(&address)?;
            if mailgate_tmtp::Reach::parse(&who).is_none() {
                bail!("{who:?}: say members, local or anyone");
            }
            let account = core
                .store
                .account(&a)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no account {a}"))?;
            core.store
                .set_setting(account.id, mailgate_tmtp::REACH_SETTING, &who)
                .await?;
            println!("{a}: TMTP nodes reachable by {who}");
        }
    }
    Ok(())
}

/// `mailgate dkim …`
#[derive(Subcommand)]
pub enum DkimAction {
    /// Make a DKIM key for a local domain in `<data_dir>/dkim/` and print the TXT record to
    /// publish (outbound SMTP mail from the domain is signed with it from then on).
    Generate {
        /// The local domain.
        domain: String,
    },
    /// Print the TXT record of a domain's existing key.
    Record {
        /// The local domain.
        domain: String,
    },
}

/// Run a `dkim` action.
pub fn dkim(config: &Config, action: DkimAction) -> anyhow::Result<()> {
    let (domain, public) = match action {
        DkimAction::Generate { domain } => {
            let domain = local_domain(config, &domain)?;
            let public = mailgate_smtp::dkim::generate(&config.dkim_dir(), &domain)?;
            eprintln!(
                "wrote {}",
                mailgate_smtp::dkim::key_file(&config.dkim_dir(), &domain).display()
            );
            (domain, public)
        }
        DkimAction::Record { domain } => {
            let domain = local_domain(config, &domain)?;
            let path = mailgate_smtp::dkim::key_file(&config.dkim_dir(), &domain);
            (domain, mailgate_smtp::dkim::public_key(&path)?)
        }
    };
    println!(
        "{}",
        mailgate_smtp::dkim::txt_record(&domain, &config.smtp.dkim_selector, &public)
    );
    Ok(())
}

/// `domain` as one of this gateway's domains (lower case), or an error naming them.
pub(crate) fn local_domain(config: &Config, domain: &str) -> anyhow::Result<String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !config
        .domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&domain))
    {
        bail!(
            "{domain} is not one of this gateway's domains ({})",
            config.domains.join(", ")
        );
    }
    Ok(domain)
}

/// `mailgate queue …`
#[derive(Subcommand)]
pub enum QueueAction {
    /// List entries waiting, in flight or failed (one line each: id, state, protocol,
    /// recipient, attempts, next attempt, last error).
    List {
        /// Only entries for this recipient domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Make entries due now (failed ones too, with their attempts kept).
    Retry {
        /// The entry id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every waiting and failed entry.
        #[arg(long)]
        all: bool,
    },
    /// Remove an entry: it is not delivered and not bounced.
    Drop {
        /// The entry id.
        id: i64,
    },
}

/// Run a `queue` action.
pub async fn queue(config: &Config, action: QueueAction) -> anyhow::Result<()> {
    let core = open_core(config).await?;
    let result = match action {
        QueueAction::List { domain } => {
            let entries = core.store.queue(domain.as_deref()).await?;
            for e in &entries {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    e.id,
                    e.state.as_str(),
                    e.protocol.as_deref().unwrap_or("-"),
                    e.recipient,
                    e.attempts,
                    mailgate_core::message::rfc3339(e.next_attempt),
                    e.last_error.as_deref().unwrap_or("-")
                );
            }
            eprintln!("{} entries", entries.len());
            Ok(())
        }
        QueueAction::Retry { id, all } => {
            let n = core
                .store
                .retry_now(
                    if all { None } else { id },
                    mailgate_core::message::now_ms(),
                )
                .await?;
            if n == 0 && !all {
                Err(anyhow::anyhow!(
                    "no waiting or failed queue entry {}",
                    id.unwrap_or(0)
                ))
            } else {
                println!("{n} entries due now");
                Ok(())
            }
        }
        QueueAction::Drop { id } => {
            if core.store.drop_queued(id).await? {
                println!("dropped queue entry {id}");
                Ok(())
            } else {
                Err(anyhow::anyhow!("no queue entry {id}"))
            }
        }
    };
    core.store.close().await?;
    result
}

/// `mailgate store …`
#[derive(Subcommand)]
pub enum StoreAction {
    /// Copy every row of one store into another, empty one (created when missing), then
    /// compare the counts of both. Stop every gateway using the source first: mail arriving
    /// after the copy starts stays behind.
    Migrate {
        /// The store to copy: sqlite:PATH or postgres://user@host/database?sslmode=….
        #[arg(long)]
        from: StoreLocation,
        /// The empty store to fill, in the same syntax.
        #[arg(long)]
        to: StoreLocation,
    },
}

/// `mailgate store migrate --from URL --to URL`.
pub async fn store(action: StoreAction) -> anyhow::Result<()> {
    let StoreAction::Migrate { from, to } = action;
    let report = migrate_store(&from, &to)
        .await
        .with_context(|| format!("copying {from} to {to} failed"))?;
    print!("{report}");
    if !report.matches() {
        bail!("the counts differ: {to} is not a complete copy of {from}");
    }
    println!("copied {from} to {to}: every count matches");
    Ok(())
}

/// `mailgate backup PATH [--archive]`.
pub async fn backup(config: &Config, path: &Path, archive: bool) -> anyhow::Result<()> {
    let core = open_core(config).await?;
    let result = if archive {
        crate::archive::write(config, path, |copy| {
            let store = core.store.clone();
            async move {
                store.backup(&copy).await?;
                Ok(())
            }
        })
        .await
    } else {
        core.store.backup(path).await.map_err(anyhow::Error::from)
    };
    core.store.close().await?;
    result.with_context(|| format!("backup to {} failed", path.display()))?;
    println!("backup written to {}", path.display());
    Ok(())
}

/// `mailgate health`: GET /healthz on the admin endpoint.
pub async fn health(
    config: &Config,
    url: Option<String>,
) -> anyhow::Result<std::process::ExitCode> {
    let addr = match url {
        Some(u) => u
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
        None => {
            let mut a = config.admin.listen;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a.to_string()
        }
    };
    let (status, body) = crate::conformance::http::get(&addr, "/healthz").await?;
    print!("{body}");
    Ok(if status == 200 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

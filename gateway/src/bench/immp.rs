//! `mailgate bench immp`: DELIVER / DATA / DONE over concurrent authenticated IMMP connections.

use super::{load, report, Load};
use clap::Args;
use mailgate_core::{Address, Importance, Part};
use mailgate_immp::client::ImmpClient;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

/// `mailgate bench immp` options.
#[derive(Args)]
pub struct ImmpBench {
    /// IMMP server, HOST:PORT (the plain port; every connection sends UPGRADE TLS).
    #[arg(long, default_value = "127.0.0.1:1025")]
    target: String,
    /// PEM file of the certificate (or CA) the server's TLS certificate is checked against.
    #[arg(long)]
    ca: PathBuf,
    /// Name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// The sending account (every connection authenticates as it with AUTH SECRET).
    #[arg(long)]
    from: String,
    /// Its password.
    #[arg(long)]
    password: String,
    /// Recipient: a local account of the server; with --spread, a pattern whose `{n}` is
    /// replaced by 0…N-1 (`user{n}@localhost`).
    #[arg(long)]
    to: String,
    /// Spread the deliveries round-robin over this many recipients (see --to).
    #[arg(long, default_value_t = 1)]
    spread: u64,
    #[command(flatten)]
    load: Load,
}

/// Run the benchmark: each connection upgrades, authenticates once, then delivers one message
/// after another (DELIVER TO, one DATA part, DONE; each waits for its reply).
pub async fn run(opts: ImmpBench) -> anyhow::Result<()> {
    let from = Address::parse_any(&opts.from)?;
    let spread = opts.spread.max(1);
    let recipients = Arc::new(super::spread_recipients(&opts.to, spread)?);
    let body = Part::text_body("x".repeat(opts.load.size));
    let parts = Arc::new(vec![body]);
    let (connector, name) = crate::tls::connector(&opts.ca, &opts.server_name)?;
    let connections =
        super::usable_connections(&opts.target, opts.load.connections, opts.load.json).await?;
    let (target, password) = (opts.target.clone(), opts.password.clone());
    let s = load(
        opts.load.messages,
        connections,
        opts.load.seconds,
        opts.load.json,
        move || {
            let (target, connector, name) = (target.clone(), connector.clone(), name.clone());
            let (from, password) = (from.clone(), password.clone());
            async move {
                let mut client = ImmpClient::connect(&target, connector, name).await?;
                client.auth_secret(&from, &password).await?;
                Ok(client)
            }
        },
        move |mut client: ImmpClient, i| {
            let (recipients, parts) = (recipients.clone(), parts.clone());
            async move {
                let to = &recipients[(i % recipients.len() as u64) as usize];
                client
                    .deliver(
                        std::slice::from_ref(to),
                        "bench",
                        &parts,
                        Importance::Normal,
                    )
                    .await?;
                Ok(client)
            }
        },
    )
    .await?;
    report(
        &s,
        opts.load.json,
        json!({"bench": "immp", "connections": connections, "size": opts.load.size,
               "spread": spread}),
        &format!(
            "immp: {connections} connections, DELIVER/DATA/DONE of {} B bodies (273 = durably stored)",
            opts.load.size
        ),
    );
    Ok(())
}

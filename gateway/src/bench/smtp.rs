//! `mailgate bench smtp`: pipelined SMTP transactions over concurrent connections to a running
//! MX listener; every `250` counted is a message the server stored durably.

use super::{load, report, usable_connections, Load};
use clap::Args;
use mailgate_smtp::client::SmtpClient;
use serde_json::json;
use std::sync::Arc;

/// `mailgate bench smtp` options.
#[derive(Args)]
pub struct SmtpBench {
    /// SMTP server, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: String,
    /// Recipient: a local account of the server; with --spread, a pattern whose `{n}` is
    /// replaced by 0…N-1 (`user{n}@localhost`).
    #[arg(long)]
    to: String,
    /// Spread the transactions round-robin over this many recipients (see --to).
    #[arg(long, default_value_t = 1)]
    spread: u64,
    /// Envelope sender (an address of another domain: the MX takes mail from strangers).
    #[arg(long, default_value = "load@bench.test")]
    from: String,
    #[command(flatten)]
    load: Load,
}

pub async fn run(opts: SmtpBench) -> anyhow::Result<()> {
    let spread = opts.spread.max(1);
    let recipients: Arc<Vec<String>> = Arc::new(
        super::spread_recipients(&opts.to, spread)?
            .iter()
            .map(ToString::to_string)
            .collect(),
    );
    let message = Arc::new(
        format!(
            "From: {from}\r\nSubject: bench\r\nMessage-ID: <bench@bench.test>\r\n\r\n{}\r\n",
            "x".repeat(opts.load.size),
            from = opts.from
        )
        .into_bytes(),
    );
    let connections =
        usable_connections(&opts.target, opts.load.connections, opts.load.json).await?;
    let (target, from) = (opts.target.clone(), opts.from.clone());
    let s = load(
        opts.load.messages,
        connections,
        opts.load.seconds,
        opts.load.json,
        move || {
            let target = target.clone();
            async move { Ok(SmtpClient::connect(&target, "bench.test").await?) }
        },
        move |mut client: SmtpClient, i| {
            let (recipients, message, from) = (recipients.clone(), message.clone(), from.clone());
            async move {
                let to = &recipients[(i % recipients.len() as u64) as usize];
                client.send(&from, &[to.as_str()], &message).await?;
                Ok(client)
            }
        },
    )
    .await?;
    report(
        &s,
        opts.load.json,
        json!({"bench": "smtp", "connections": connections, "size": opts.load.size,
               "spread": spread}),
        &format!(
            "smtp: {connections} connections, pipelined transactions of {} B bodies \
             (250 = durably stored)",
            opts.load.size
        ),
    );
    Ok(())
}

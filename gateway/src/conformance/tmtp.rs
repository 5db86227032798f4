//! The `tmtp` transport of the conformance runner: TLS connections (several per case, chosen
//! with `conn`), requests framed by the runner (`send` is the JSON header; `datahead` and
//! `data` follow it, their lengths filled in), replies read frame by frame and matched by
//! their JSON header (`expect`, `matches`, `capture`) and data (`body`).

use super::case::{Case, Step};
use super::{check_json, subst, write_out, Runner, STEP_TIMEOUT};
use anyhow::{bail, Context};
use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use crate::listener::Conn;

/// The longest data the runner reads from one frame.
const MAX_DATA: u64 = 16 * 1024 * 1024;

/// One frame from the server.
struct Frame {
    head: Value,
    data: Vec<u8>,
}

/// `Ok(None)` when the server closed the connection before a frame began.
async fn read_frame(conn: &mut BufReader<Conn>) -> anyhow::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = conn.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            bail!("the connection closed inside a length prefix");
        }
        got += n;
    }
    let text = std::str::from_utf8(&len).context("length prefix is not text")?;
    let n = usize::from_str_radix(text, 16).with_context(|| format!("length prefix {text:?}"))?;
    let mut head = vec![0u8; n];
    conn.read_exact(&mut head).await.context("header")?;
    let head: Value = serde_json::from_slice(&head)
        .with_context(|| format!("header is not JSON: {:?}", String::from_utf8_lossy(&head)))?;
    let datalen = head["datalen"].as_u64().unwrap_or(0);
    if datalen > MAX_DATA {
        bail!("datalen {datalen} is more than the runner reads");
    }
    let mut data = vec![0u8; datalen as usize];
    conn.read_exact(&mut data).await.context("data")?;
    Ok(Some(Frame { head, data }))
}

async fn next_frame(conn: &mut BufReader<Conn>) -> anyhow::Result<Frame> {
    tokio::time::timeout(STEP_TIMEOUT, read_frame(conn))
        .await
        .context("no frame in time")??
        .context("the server closed the connection while a frame was expected")
}

/// Does the frame satisfy the step's `expect`, `matches` and `body` (captures included)?
fn check(frame: &Frame, step: &Step, vars: &mut HashMap<String, String>) -> anyhow::Result<()> {
    check_json(&frame.head, step, vars)?;
    if let Some(pattern) = &step.body {
        let re = Regex::new(&subst(pattern, vars, true)?)?;
        let text = String::from_utf8_lossy(&frame.data);
        if !re.is_match(&text) {
            bail!("data {text:?} does not match {pattern:?}");
        }
    }
    Ok(())
}

/// The request a step sends, framed.
fn request(step: &Step, vars: &HashMap<String, String>) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(text) = &step.send {
        let mut head: Value = serde_json::from_str(&subst(text, vars, false)?)
            .context("tmtp: send must be a JSON header")?;
        let sec = match &step.datahead {
            Some(d) => subst(d, vars, false)?,
            None => String::new(),
        };
        let data = match &step.data {
            Some(d) => subst(d, vars, false)?,
            None => String::new(),
        };
        if let Value::Object(map) = &mut head {
            if !sec.is_empty() {
                map.entry("datahead").or_insert(sec.len().into());
            }
            if !sec.is_empty() || !data.is_empty() {
                map.entry("datalen")
                    .or_insert((sec.len() + data.len()).into());
            }
        }
        let head = serde_json::to_string(&head)?;
        out.extend_from_slice(format!("{:04x}", head.len()).as_bytes());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(sec.as_bytes());
        out.extend_from_slice(data.as_bytes());
    }
    if let Some(raw) = &step.send_raw {
        out.extend_from_slice(subst(raw, vars, false)?.as_bytes());
    }
    Ok(out)
}

/// Acknowledge a skipped message that carries an id (so the next one can come).
async fn ack(conn: &mut BufReader<Conn>, frame: &Frame) -> anyhow::Result<()> {
    if frame.head.get("headsum").is_none() {
        return Ok(());
    }
    let id = frame.head["id"].as_str().unwrap_or_default();
    let head = serde_json::json!({"op": 10, "id": id, "type": "n"}).to_string();
    conn.get_mut()
        .write_all(format!("{:04x}{head}", head.len()).as_bytes())
        .await?;
    Ok(())
}

async fn step(
    runner: &Runner,
    conns: &mut Vec<Option<BufReader<Conn>>>,
    step: &Step,
    vars: &mut HashMap<String, String>,
) -> anyhow::Result<()> {
    let acts = step.send.is_some()
        || step.send_raw.is_some()
        || step.expect.is_some()
        || step.matches.is_some()
        || step.capture.is_some()
        || step.body.is_some()
        || step.expect_closed
        || step.quiet_ms.is_some();
    if !acts {
        bail!("a tmtp step needs send, send_raw, expect, matches, capture, body, quiet_ms or expect_closed");
    }
    let index = step.conn.unwrap_or(0);
    if index >= 8 {
        bail!("conn {index}: a case may use connections 0 to 7");
    }
    if conns.len() <= index {
        conns.resize_with(index + 1, || None);
    }
    if conns[index].is_none() {
        conns[index] = Some(BufReader::new(runner.connect(false).await?));
    }
    let conn = conns[index].as_mut().expect("opened above");
    let out = request(step, vars)?;
    write_out(conn, &out, step.chunk).await?;
    if let Some(ms) = step.quiet_ms {
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(ms), read_frame(conn)).await {
            if let Some(f) = frame? {
                bail!("expected nothing for {ms} ms, got {}", f.head);
            }
            bail!("expected nothing for {ms} ms; the server closed the connection");
        }
    }
    if step.expect_closed {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(STEP_TIMEOUT, conn.read_to_end(&mut rest))
            .await
            .context("connection still open")?;
        if n.is_ok() && !rest.is_empty() {
            bail!(
                "expected the connection to close, got {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
        return Ok(());
    }
    let wants = step.expect.is_some()
        || step.matches.is_some()
        || step.capture.is_some()
        || step.body.is_some();
    if !wants {
        return Ok(());
    }
    let mut skipped = 0;
    loop {
        let frame = next_frame(conn).await?;
        if !step.skip {
            return check(&frame, step, vars);
        }
        let mut trial = vars.clone();
        if check(&frame, step, &mut trial).is_ok() {
            *vars = trial;
            return Ok(());
        }
        skipped += 1;
        if skipped > 100 {
            bail!("100 frames without one that matches");
        }
        ack(conn, &frame).await?;
    }
}

/// Run a tmtp case.
pub(super) async fn script(
    runner: &Runner,
    case: &Case,
    vars: &mut HashMap<String, String>,
) -> anyhow::Result<()> {
    let mut conns: Vec<Option<BufReader<Conn>>> = Vec::new();
    for (i, s) in case.steps.iter().enumerate() {
        step(runner, &mut conns, s, vars)
            .await
            .with_context(|| format!("step {} (conn {})", i + 1, s.conn.unwrap_or(0)))?;
    }
    Ok(())
}

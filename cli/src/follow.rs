//! Following a long operation (a topology change, a repair) until it ends: a progress bar in a
//! terminal, a line per change of progress otherwise, JSON lines with `--json`.

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

/// One look at the followed operation.
pub struct Seen {
    /// `completed` ends well; `failed` and `aborted` end badly; anything else is still going.
    pub status: String,
    pub ranges_done: u64,
    pub ranges_total: u64,
    /// One human line of progress (without the status).
    pub summary: String,
    pub error: String,
    pub json: Value,
}

/// Polls `look` every half second until the operation ends or `timeout` passes. Fails unless
/// it completes. `what` names it in messages ("change", "repair").
pub async fn follow<F, Fut>(
    what: &str,
    id: &str,
    timeout: Duration,
    json_out: bool,
    mut look: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Seen>>,
{
    let started = Instant::now();
    let bar = (!json_out && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} ranges {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(id.to_string());
        b
    });
    let mut last = String::new();
    loop {
        let s = look().await?;
        let line = format!("{} {}", s.status, s.summary);
        if let Some(b) = &bar {
            b.set_length(s.ranges_total);
            b.set_position(s.ranges_done);
            b.set_message(line.clone());
            b.tick();
        } else if line != last {
            if json_out {
                println!("{}", s.json);
            } else {
                println!("{id}: {line}");
            }
        }
        last = line;
        match s.status.as_str() {
            "completed" => {
                if let Some(b) = &bar {
                    b.finish_with_message(format!("completed {}", s.summary));
                }
                return Ok(());
            }
            "failed" | "aborted" => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                bail!("{what} {id} {}: {}", s.status, s.error);
            }
            _ => {}
        }
        if started.elapsed() > timeout {
            bail!(
                "{what} {id} still {} after {}s",
                s.status,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

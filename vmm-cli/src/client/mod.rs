//! The client subcommands (`vmm status`, `vmm pause`, `vmm stats`, ...):
//! they talk to the control API of a `vmm run --api-socket PATH`.

mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixStream;

use crate::api::{Action, PREFIX, StatsFormat};
use crate::output;
use progress::SaveProgress;

/// How long a client waits for the VMM's answer unless `--timeout` says.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The same for a save or a teleport, which move all of guest RAM.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long connecting to the API socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one look at a save's progress may take.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the VMM listens and how to print its answers.
#[derive(Args)]
pub struct Connection {
    /// The API socket of the running VMM (`vmm run --api-socket PATH`).
    #[arg(long, value_name = "PATH", env = "VMM_API_SOCKET")]
    api_socket: PathBuf,
    /// Print the API's JSON answer (one line, for scripts) instead of
    /// readable text.
    #[arg(long)]
    json: bool,
    /// How long to wait for the VMM's answer before giving up with an
    /// error [default: 30; `save` and `teleport`: 3600].
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// The wait when `--timeout` is not given.
    #[arg(skip = ANSWER_TIMEOUT)]
    default_timeout: Duration,
}

impl Connection {
    /// For requests that move all of guest RAM: a longer default wait.
    fn transferring(mut self) -> Self {
        self.default_timeout = TRANSFER_TIMEOUT;
        self
    }

    /// How long to wait for the answer.
    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(self.default_timeout)
    }
}

/// Parses `--timeout`: seconds, more than zero (fractions allowed).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds <= 0.0 {
        return Err("the timeout must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// `vmm info NAME [ARGS]`.
#[derive(Args)]
pub struct InfoArgs {
    /// The info handler (`help` lists them).
    name: String,
    /// Arguments for the handler.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
    #[command(flatten)]
    connection: Connection,
}

/// `vmm stats [PATTERN]`.
#[derive(Args)]
pub struct StatsArgs {
    /// Which statistics (`*`, `?`, `|`; everything when omitted).
    pattern: Option<String>,
    /// Output format (`--json` is the same as `--format json`).
    #[arg(long, value_enum, default_value_t = StatsFormat::Text, conflicts_with = "reset")]
    format: StatsFormat,
    /// Reset the matching statistics to zero instead of showing them (as
    /// `VBoxManage debugvm statistics --reset`); prints how many.
    #[arg(long)]
    reset: bool,
    #[command(flatten)]
    connection: Connection,
}

/// `vmm save FILE`.
#[derive(Args)]
pub struct SaveArgs {
    /// Where the VMM writes the saved state.
    file: PathBuf,
    /// Live save: the guest keeps running while memory is sent in passes
    /// and stops only for the final pass.
    #[arg(long)]
    live: bool,
    /// Power the VM off after saving (default: resume it).
    #[arg(long)]
    poweroff: bool,
    #[command(flatten)]
    connection: Connection,
}

/// `vmm teleport ADDR` or `vmm teleport --cancel`.
#[derive(Args)]
pub struct TeleportArgs {
    /// The target's address (host:port), where `vmm run --incoming` listens.
    #[arg(required_unless_present = "cancel")]
    address: Option<String>,
    /// Cancel the teleport in progress instead: the VM runs on.
    #[arg(long, conflicts_with = "address")]
    cancel: bool,
    #[command(flatten)]
    connection: Connection,
}

/// `vmm balloon [SIZE]`.
#[derive(Args)]
pub struct BalloonArgs {
    /// The balloon to ask the guest for (MiB, or a size with a unit:
    /// 512M, 1G; 0 deflates it); without SIZE: show the balloon.
    #[arg(value_parser = parse_balloon)]
    size: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

/// Parses SIZE: whole MiB (the balloon's granularity).
fn parse_balloon(text: &str) -> Result<u64, String> {
    let bytes = vmm_core::config::parse_size(text).map_err(|e| e.to_string())?;
    if bytes % (1 << 20) != 0 {
        return Err(format!("{text:?} is not a whole number of MiB"));
    }
    Ok(bytes >> 20)
}

/// `vmm pause`, `vmm resume`, `vmm reset`, `vmm poweroff`, `vmm status`.
#[derive(Args)]
pub struct PlainArgs {
    #[command(flatten)]
    connection: Connection,
}

/// An answer from the API.
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body).with_context(|| {
            format!(
                "the VMM answered with something that is not JSON: {:?}",
                self.body
            )
        })
    }
}

/// Sends one request to the API at `socket` and waits at most `timeout`
/// for the whole answer (connecting at most [`CONNECT_TIMEOUT`] of it).
fn request(
    socket: &Path,
    method: Method,
    target: &str,
    body: Option<Value>,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let connect_timeout = CONNECT_TIMEOUT.min(timeout);
    runtime.block_on(async {
        let stream = tokio::time::timeout(connect_timeout, UnixStream::connect(socket))
            .await
            .map_err(|_| {
                anyhow!(
                    "cannot connect to the API socket {} within {connect_timeout:?}",
                    socket.display()
                )
            })?
            .with_context(|| {
                format!(
                    "cannot connect to the API socket {} (is `vmm run --api-socket` running?)",
                    socket.display()
                )
            })?;
        tokio::time::timeout(timeout, send(stream, method, target, body))
            .await
            .map_err(|_| {
                anyhow!(
                    "the VMM did not answer within {timeout:?} (--timeout SECONDS waits longer)"
                )
            })?
    })
}

/// One request and its answer on a connected `stream`.
async fn send(
    stream: UnixStream,
    method: Method,
    target: &str,
    body: Option<Value>,
) -> anyhow::Result<Reply> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the VMM failed")?;
    tokio::spawn(async move {
        // Errors surface through `send_request` below.
        let _ = connection.await;
    });
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(target)
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .context("cannot build the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("the VMM did not answer")?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("cannot read the VMM's answer")?
        .to_bytes();
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Turns an error reply into an error (readable mode) or prints it (JSON
/// mode); `Ok(None)` means the reply was an error already reported.
fn check(reply: Reply, json: bool) -> anyhow::Result<Option<Reply>> {
    if (200..300).contains(&reply.status) {
        return Ok(Some(reply));
    }
    if json {
        output::print(&compact(&reply.body))?;
        return Ok(None);
    }
    let detail = reply.json().ok();
    let error = detail.as_ref().map(|v| &v["error"]);
    let message = error
        .and_then(|e| e["message"].as_str())
        .unwrap_or(reply.body.as_str());
    let code = error.and_then(|e| e["code"].as_str()).unwrap_or("error");
    bail!("{message} (HTTP {} {code})", reply.status)
}

/// Sends a request and prints the answer: the JSON body with `--json`,
/// otherwise what `readable` makes of it.
fn exchange(
    connection: &Connection,
    method: Method,
    target: &str,
    body: Option<Value>,
    readable: impl FnOnce(&Reply) -> anyhow::Result<String>,
) -> anyhow::Result<ExitCode> {
    let reply = request(
        &connection.api_socket,
        method,
        target,
        body,
        connection.timeout(),
    )?;
    let Some(reply) = check(reply, connection.json)? else {
        return Ok(crate::exit::Status::Error.into());
    };
    let text = if connection.json {
        compact(&reply.body)
    } else {
        readable(&reply)?
    };
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    output::print(&format!("{text}{newline}"))?;
    Ok(ExitCode::SUCCESS)
}

/// An answer's JSON body as one line; a body that is not JSON as it came.
fn compact(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| output::json_line(&v).ok())
        .unwrap_or_else(|| body.to_owned())
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

/// `vmm status`: state, configuration, vCPUs and uptime.
pub fn status(args: PlainArgs) -> anyhow::Result<ExitCode> {
    exchange(
        &args.connection,
        Method::GET,
        &format!("{PREFIX}/vm"),
        None,
        |reply| {
            let v = reply.json()?;
            let mut text = format!(
                "state:    {}\nboot:     {}\nRAM:      {} MiB\nvCPUs:    {}\nuptime:   {:.1} s\n",
                v["state"].as_str().unwrap_or("?"),
                v["config"]["boot"].as_str().unwrap_or("?"),
                v["config"]["ram_bytes"].as_u64().unwrap_or(0) >> 20,
                v["config"]["cpus"],
                v["uptime_secs"].as_f64().unwrap_or(0.0),
            );
            for cpu in v["vcpus"].as_array().into_iter().flatten() {
                text.push_str(&format!("vCPU {}:   {} halts\n", cpu["id"], cpu["halts"]));
            }
            Ok(text)
        },
    )
}

/// `vmm pause`, `vmm resume`, `vmm reset`, `vmm poweroff`.
pub fn change_state(args: PlainArgs, action: Action) -> anyhow::Result<ExitCode> {
    exchange(
        &args.connection,
        Method::PUT,
        &format!("{PREFIX}/vm/state"),
        Some(json!({ "action": action })),
        |reply| {
            let v = reply.json()?;
            let done = match action {
                Action::Pause => "paused",
                Action::Resume => "resumed",
                Action::Reset => "reset",
                Action::PowerOff => "powered off",
            };
            Ok(format!(
                "VM {done}; state {}",
                v["state"].as_str().unwrap_or("?")
            ))
        },
    )
}

/// `vmm balloon [SIZE]`: shows the memory balloon or asks the guest for
/// one of SIZE.
pub fn balloon(args: BalloonArgs) -> anyhow::Result<ExitCode> {
    let (method, body) = match args.size {
        Some(mib) => (Method::PUT, Some(json!({ "size_mib": mib }))),
        None => (Method::GET, None),
    };
    exchange(
        &args.connection,
        method,
        &format!("{PREFIX}/balloon"),
        body,
        |reply| {
            let v = reply.json()?;
            Ok(format!(
                "balloon: target {} MiB, size {} MiB (given back by the guest)",
                v["target_mib"].as_u64().unwrap_or(0),
                v["size_mib"].as_u64().unwrap_or(0),
            ))
        },
    )
}

/// `vmm info NAME [ARGS]`: runs an info handler in the VMM.
pub fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    // Handler names are letters, digits, `_`, `-` and `.`: nothing that
    // would change the meaning of the URL.
    if args.name.is_empty() || args.name.contains(['/', '?', '#', '%', ' ']) {
        bail!("invalid info handler name {:?}", args.name);
    }
    let handler_args = args.args.join(" ");
    let target = format!(
        "{PREFIX}/info/{}?{}",
        args.name,
        query(&[("args", &handler_args)])
    );
    exchange(&args.connection, Method::GET, &target, None, |reply| {
        Ok(reply.json()?["output"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    })
}

/// `vmm stats [PATTERN]`: the statistics in any format.
pub fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let pattern = args.pattern.as_deref().unwrap_or("");
    if args.reset {
        let target = format!("{PREFIX}/stats/reset?{}", query(&[("pattern", pattern)]));
        return exchange(&args.connection, Method::PUT, &target, None, |reply| {
            let n = reply.json()?["reset"].as_u64().unwrap_or(0);
            Ok(format!("reset {n} statistics"))
        });
    }
    let format = if args.connection.json {
        StatsFormat::Json
    } else {
        args.format
    };
    let target = format!(
        "{PREFIX}/stats?{}",
        query(&[("pattern", pattern), ("format", format.name()),])
    );
    exchange(&args.connection, Method::GET, &target, None, |reply| {
        Ok(reply.body.clone())
    })
}

/// `vmm save FILE`: asks the VMM to save the VM's state to FILE.
pub fn save(args: SaveArgs) -> anyhow::Result<ExitCode> {
    // The VMM may run in another directory: send an absolute path.
    let file = std::path::absolute(&args.file)
        .with_context(|| format!("cannot resolve {}", args.file.display()))?;
    let connection = args.connection.transferring();
    let _progress = (!connection.json).then(|| SaveProgress::show(connection.api_socket.clone()));
    exchange(
        &connection,
        Method::PUT,
        &format!("{PREFIX}/vm/save"),
        Some(json!({
            "path": file.to_string_lossy(),
            "live": args.live,
            "power_off": args.poweroff,
        })),
        |reply| {
            let v = reply.json()?;
            let passes = match v["live_passes"].as_u64() {
                Some(0) | None => String::new(),
                Some(n) => format!(", {n} live passes"),
            };
            Ok(format!(
                "VM state saved to {}: {} bytes{passes}, downtime {:.1} ms; state {}",
                file.display(),
                v["bytes"].as_u64().unwrap_or(0),
                v["downtime_ms"].as_f64().unwrap_or(0.0),
                v["state"].as_str().unwrap_or("?"),
            ))
        },
    )
}

/// `vmm teleport ADDR`: asks the VMM to teleport the VM to ADDR;
/// `vmm teleport --cancel` cancels the teleport in progress.
pub fn teleport(args: TeleportArgs) -> anyhow::Result<ExitCode> {
    let target = format!("{PREFIX}/vm/teleport");
    let Some(address) = args.address.filter(|_| !args.cancel) else {
        return exchange(&args.connection, Method::DELETE, &target, None, |reply| {
            let v = reply.json()?;
            Ok(format!(
                "teleport cancelled; state {}",
                v["state"].as_str().unwrap_or("?")
            ))
        });
    };
    exchange(
        &args.connection.transferring(),
        Method::PUT,
        &target,
        Some(json!({ "address": address })),
        |reply| {
            let v = reply.json()?;
            Ok(format!(
                "VM teleported to {address}: {} bytes, {} live passes, downtime {:.1} ms; state {}",
                v["bytes"].as_u64().unwrap_or(0),
                v["live_passes"].as_u64().unwrap_or(0),
                v["downtime_ms"].as_f64().unwrap_or(0.0),
                v["state"].as_str().unwrap_or("?"),
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_owned(),
        }
    }

    #[test]
    fn error_replies_become_readable_errors() {
        let body = r#"{"error":{"status":409,"code":"conflict","message":"cannot resume: VM state is RUNNING"}}"#;
        let err = check(reply(409, body), false).err().unwrap();
        assert_eq!(
            err.to_string(),
            "cannot resume: VM state is RUNNING (HTTP 409 conflict)"
        );
        // Something that is not the API's error object is shown as it came.
        let err = check(reply(502, "bad gateway"), false).err().unwrap();
        assert_eq!(err.to_string(), "bad gateway (HTTP 502 error)");
    }

    #[test]
    fn balloon_sizes_are_whole_mib() {
        assert_eq!(parse_balloon("64"), Ok(64));
        assert_eq!(parse_balloon("1G"), Ok(1024));
        assert_eq!(parse_balloon("0"), Ok(0));
        assert!(parse_balloon("1536K").is_err());
        assert!(parse_balloon("lots").is_err());
    }

    #[test]
    fn json_answers_are_printed_on_one_line() {
        assert_eq!(compact("{\n  \"a\": [1,\n 2]\n}"), "{\"a\":[1,2]}\n");
        assert_eq!(compact("not json"), "not json");
    }

    #[test]
    fn json_mode_reports_errors_without_failing_the_exchange() {
        assert!(check(reply(501, "{}"), true).unwrap().is_none());
        let ok = check(reply(200, "{}"), false).unwrap().unwrap();
        assert_eq!(ok.json().unwrap(), json!({}));
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("7200"), Ok(Duration::from_secs(7200)));
        for bad in ["0", "-3", "soon", "1e30", "NaN"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            query(&[("pattern", "/HM/*|/IOM/*"), ("format", "text")]),
            "pattern=%2FHM%2F*%7C%2FIOM%2F*&format=text"
        );
    }
}

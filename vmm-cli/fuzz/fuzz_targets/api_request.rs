//! Arbitrary bytes as a client's side of a control API connection: one or
//! more HTTP/1.1 requests (or anything else) go through the server's whole
//! request handling (hyper's parser, the body limits and timeouts, the
//! routes with their JSON and query parsing) against a stand-in VM. Any
//! outcome other than an answer or a closed connection (a panic, which the
//! fuzzer's panic hook turns into an abort, or a hang) is a bug.

#![no_main]

use std::sync::{Arc, LazyLock};

use hyper_util::server::graceful::GracefulShutdown;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use vmm_cli::api::fake::FakeVm;
use vmm_cli::api::{Control, Slot, serve_connection};

/// A single-threaded runtime whose clock only moves when every task waits:
/// the server's timeouts then end a connection as soon as the input is used
/// up, at no cost in real time.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime")
});

fuzz_target!(|data: &[u8]| {
    RUNTIME.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let control: Arc<dyn Control> = Arc::new(FakeVm::new());
        let graceful = GracefulShutdown::new();
        let serving = serve_connection(server, control, Slot::new(), &graceful);
        let talking = async {
            // The server may close before it has read everything.
            let _ = client.write_all(data).await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let ((), answer) = tokio::join!(serving, talking);
        assert!(
            answer.is_empty()
                || answer.starts_with(b"HTTP/1.1 ")
                || answer.starts_with(b"HTTP/1.0 "),
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
    });
});

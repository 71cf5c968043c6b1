//! An application protocol on top of quicmesh: a tiny line-based key-value
//! store. quicmesh gives the raw, authenticated QUIC streams (each with the
//! peer's verified name); the application owns the bytes.
//!
//! Run: `cargo run --example app_protocol`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicmesh::{IncomingStream, Node};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Serves `SET key value` / `GET key` lines, one reply line each.
async fn serve(stream: IncomingStream, store: Arc<Mutex<HashMap<String, String>>>) {
    let (Some(mut send), recv) = (stream.send, stream.recv) else {
        return;
    };
    let mut lines = BufReader::new(recv).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.splitn(3, ' ');
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("SET"), Some(k), Some(v)) => {
                store.lock().expect("lock").insert(k.into(), v.into());
                "OK".to_owned()
            }
            (Some("GET"), Some(k), None) => {
                let v = store.lock().expect("lock").get(k).cloned();
                v.unwrap_or_else(|| "NOT FOUND".into())
            }
            _ => format!("ERR cannot parse {line:?}"),
        };
        println!("[server] {} asked {line:?} -> {reply}", stream.peer);
        if send
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = send.finish();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cookie = "example cookie";
    let server = Node::builder()
        .name("kv@127.0.0.1")
        .listen("127.0.0.1:0".parse()?)
        .cookie(cookie)
        .start()
        .await?;
    let client = Node::builder()
        .name("app@127.0.0.1")
        .listen("127.0.0.1:0".parse()?)
        .cookie(cookie)
        .start()
        .await?;
    client.connect(&server.addr()).await?;

    let mut listener = server.protocol("kv/1")?;
    let store = Arc::new(Mutex::new(HashMap::new()));
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            tokio::spawn(serve(stream, store.clone()));
        }
    });

    let (mut send, recv) = client.open_bi(server.name(), "kv/1").await?;
    let mut replies = BufReader::new(recv).lines();
    for request in ["SET colour blue", "GET colour", "GET size", "DANCE"] {
        send.write_all(format!("{request}\n").as_bytes()).await?;
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next_line()).await??;
        println!("[client] {request} -> {}", reply.unwrap_or_default());
    }
    send.finish()?;

    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

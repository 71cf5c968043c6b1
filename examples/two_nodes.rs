//! Two nodes in one process: connect, watch events, ping, print status,
//! shut one down gracefully.
//!
//! Run: `cargo run --example two_nodes`

use std::time::Duration;

use quicmesh::{Node, NodeEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cookie = "example cookie: use QUICMESH_COOKIE or ~/.quicmesh.cookie for real";
    let a = Node::builder()
        .name("a@127.0.0.1")
        .listen("127.0.0.1:0".parse()?)
        .cookie(cookie)
        .start()
        .await?;
    let b = Node::builder()
        .name("b@127.0.0.1")
        .listen("127.0.0.1:0".parse()?)
        .cookie(cookie)
        .seed(a.addr()) // kept connected, re-dialled with backoff
        .start()
        .await?;

    let mut events = a.events();
    b.wait_for_nodes(1, Duration::from_secs(10)).await?;
    if let Ok(NodeEvent::NodeUp { node, .. }) = events.recv().await {
        println!("a sees {node} up");
    }
    let rtt = a.ping(b.name(), Duration::from_secs(1)).await?;
    println!("ping a -> b: {rtt:?}\n\n{}", a.status());

    b.shutdown().await;
    if let Ok(NodeEvent::NodeDown { node, reason }) = events.recv().await {
        println!("a sees {node} down: {reason}");
    }
    a.shutdown().await;
    Ok(())
}

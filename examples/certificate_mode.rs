//! Certificate mode: make a CA and two node certificates (what
//! `quicmesh certs ca` / `quicmesh certs issue` do), start two nodes that
//! trust only that CA, and show that a certificate naming another node is
//! refused.
//!
//! Run: `cargo run --example certificate_mode`

use quicmesh::identity::{CertificateAuthority, write_issued};
use quicmesh::{CertFiles, ConnectError, Node, NodeAddr, NodeName};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("quicmesh-example-{}", std::process::id()));
    let ca = CertificateAuthority::generate("example CA", 30)?;
    ca.write_dir(&dir, true)?;
    let mut nodes = Vec::new();
    for name in ["app1@127.0.0.1", "app2@127.0.0.1"] {
        let name: NodeName = name.parse()?;
        write_issued(&ca.issue(&name, 30)?, &dir, &name, true)?;
        let node = Node::builder()
            .name(name.as_str())
            .listen("127.0.0.1:0".parse()?)
            .certificates(CertFiles::in_dir(&dir, &name))
            .start()
            .await?;
        nodes.push(node);
    }
    nodes[1].connect(&nodes[0].addr()).await?;
    println!("{} connected to {}", nodes[1].name(), nodes[0].name());

    // Dial app1's port expecting another name: its certificate says app1.
    let wrong = NodeAddr::new("app3@127.0.0.1".parse()?, nodes[0].local_addr().port());
    match nodes[1].connect(&wrong).await {
        Err(e @ ConnectError::AuthenticationFailed { .. }) => println!("refused as expected: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    for n in nodes {
        n.shutdown().await;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

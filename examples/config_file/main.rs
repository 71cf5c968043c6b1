//! A node configured from a TOML file: load it into a `NodeConfig`, see
//! the values in force (the file's and the defaults), change a few in code
//! as `quicmesh node` flags do, start two nodes, and see how a bad file is
//! refused.
//!
//! Run: `cargo run --example config_file` (reads
//! `examples/config_file/node.toml`), or
//! `cargo run --example config_file -- path/to/node.toml`.

use std::path::PathBuf;
use std::time::Duration;

use quicmesh::{Builder, ConfigError, NodeConfig, StartError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/config_file/node.toml"),
        PathBuf::from,
    );
    // What `quicmesh node --config FILE` does first.
    let text = std::fs::read_to_string(&path)?;
    let config = NodeConfig::from_toml(&text)?;
    config.validate()?;
    println!(
        "{}: name {:?}, heartbeat every {:?} (down after {:?}), rpc timeout {:?}",
        path.display(),
        config.name.as_ref().map(ToString::to_string),
        config.heartbeat.interval,
        config.heartbeat.timeout,
        config.rpc.timeout,
    );
    // Keys the file left out have their documented defaults.
    println!(
        "defaults kept: max_frame {} bytes, max_dials {}, leaf_validity {:?}",
        config.max_frame, config.max_dials, config.leaf_validity
    );

    let a = Builder::from_config(config.clone()).start().await?;
    println!("started {} on {}", a.name(), a.local_addr());

    // A second node from the same file, with its name and seeds changed in
    // code, as `--name` and `--connect` change them on the command line.
    let mut b_config = config;
    b_config.name = Some("b@127.0.0.1".parse()?);
    b_config.seeds.push(a.addr());
    let b = Builder::from_config(b_config.clone()).start().await?;
    b.wait_for_nodes(1, Duration::from_secs(10)).await?;
    println!("started {}; it sees {}", b.name(), b.nodes()[0]);
    // The whole configuration in force for b, defaults included, as TOML
    // (a file that would start b the same way).
    println!(
        "\nb's configuration in force:\n{}",
        toml::to_string(&b_config)?
    );

    // Bad files are refused with the key and the values named.
    let refusals = [
        "name = \"a@127.0.0.1\"\nlisten_port = 4370",
        "name = \"a@127.0.0.1\"\nhandshake_timeout = \"5 parsecs\"",
        "name = \"a@127.0.0.1\"\n[heartbeat]\ninterval = \"1s\"\ntimeout = \"1s\"",
    ];
    for bad in refusals {
        let refused = match NodeConfig::from_toml(bad) {
            Err(e) => e,
            Ok(config) => config.validate().expect_err("a bad configuration"),
        };
        println!("refused: {refused}");
    }
    // start() validates too, so a bad configuration never binds a socket.
    let nameless = Builder::from_config(NodeConfig::default()).start().await;
    assert!(matches!(
        nameless,
        Err(StartError::Config(ConfigError::MissingName))
    ));

    b.shutdown().await;
    a.shutdown().await;
    Ok(())
}

//! Typed RPC between two nodes in one process: serde request and response
//! structs, a handler that can fail, the caller's timeout, a cast and a
//! multicall, and what each kind of failure looks like to the caller.
//!
//! Run: `cargo run --example typed_rpc`

use std::time::Duration;

use quicmesh::{Node, RpcError};
use serde::{Deserialize, Serialize};

/// What the caller asks for.
#[derive(Debug, Serialize, Deserialize)]
struct QuoteRequest {
    sku: String,
    quantity: u32,
}

/// What the service answers. Both sides use the same types: a mismatch is
/// refused as `RpcError::Decode`, never mis-read.
#[derive(Debug, Serialize, Deserialize)]
struct Quote {
    sku: String,
    unit_cents: u64,
    total_cents: u64,
}

/// The service's own error. Any `Display` will do: the caller gets its text
/// as `RpcError::Remote { message, .. }`.
#[derive(Debug)]
enum QuoteError {
    UnknownSku(String),
    ZeroQuantity,
}

impl std::fmt::Display for QuoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownSku(sku) => write!(f, "no such sku {sku:?}"),
            Self::ZeroQuantity => f.write_str("quantity must be at least 1"),
        }
    }
}

fn price_of(sku: &str) -> Option<u64> {
    match sku {
        "bolt" => Some(12),
        "nut" => Some(7),
        _ => None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cookie = "example cookie: use QUICMESH_COOKIE or ~/.quicmesh.cookie for real";
    let shop = Node::builder()
        .name("shop@127.0.0.1")
        .listen("127.0.0.1:0".parse()?)
        .cookie(cookie)
        .start()
        .await?;
    let client = Node::builder()
        .name("client@127.0.0.1")
        .listen("127.0.0.1:0".parse()?)
        .cookie(cookie)
        .seed(shop.addr())
        .start()
        .await?;
    client.wait_for_nodes(1, Duration::from_secs(10)).await?;

    // On the shop node: a typed service. The context names the caller as
    // its certificate does.
    shop.register("quote", |ctx, req: QuoteRequest| async move {
        println!("shop: quote for {} asked by {}", req.sku, ctx.from);
        if req.quantity == 0 {
            return Err(QuoteError::ZeroQuantity);
        }
        let unit_cents =
            price_of(&req.sku).ok_or_else(|| QuoteError::UnknownSku(req.sku.clone()))?;
        Ok(Quote {
            total_cents: unit_cents * u64::from(req.quantity),
            unit_cents,
            sku: req.sku,
        })
    })?;
    // A slow service, to show the caller's timeout.
    shop.register("slow", |_ctx, millis: u64| async move {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok::<_, String>(millis)
    })?;
    // A service for casts: nobody waits for its answer.
    shop.register("log", |ctx, line: String| async move {
        println!("shop: log from {}: {line}", ctx.from);
        Ok::<_, String>(())
    })?;

    // A call with the default timeout (rpc.timeout, 5 s).
    let request = QuoteRequest {
        sku: "bolt".into(),
        quantity: 40,
    };
    let quote: Quote = client.call(shop.name(), "quote", &request).await?;
    println!("client: {quote:?}");
    assert_eq!(quote.total_cents, 480);

    // The handler's error comes back as RpcError::Remote, with its text.
    let request = QuoteRequest {
        sku: "washer".into(),
        quantity: 1,
    };
    match client
        .call::<_, Quote>(shop.name(), "quote", &request)
        .await
    {
        Err(RpcError::Remote { message, .. }) => println!("client: refused: {message}"),
        other => panic!("expected a remote error, got {other:?}"),
    }

    // A timeout: the caller stops waiting, and the callee drops the handler
    // at the same deadline. The handler may have run, so a retry could do
    // the work twice: may_have_run() says so.
    let started = std::time::Instant::now();
    let e = client
        .call_timeout::<_, u64>(shop.name(), "slow", &2_000u64, Duration::from_millis(100))
        .await
        .expect_err("the slow call should time out");
    println!(
        "client: {e} (after {:?}; may have run: {})",
        started.elapsed(),
        e.may_have_run()
    );
    assert!(matches!(e, RpcError::Timeout { .. }) && e.may_have_run());

    // A service the peer does not serve: refused before anything ran.
    let e = client
        .call::<_, ()>(shop.name(), "no-such-service", &())
        .await
        .expect_err("no such service");
    println!("client: {e} (may have run: {})", e.may_have_run());
    assert!(matches!(e, RpcError::NoSuchService { .. }) && !e.may_have_run());

    // Types the service does not expect: refused as Decode.
    let e = client
        .call::<_, Quote>(shop.name(), "quote", &"not a QuoteRequest")
        .await
        .expect_err("wrong request type");
    println!("client: {e}");
    assert!(matches!(e, RpcError::Decode { .. }));

    // A cast: Ok once the request is handed to the transport.
    client
        .cast(shop.name(), "log", &"hello from a cast".to_owned())
        .await?;

    // A multicall: one result per node, in the order given.
    let results = client
        .multicall::<_, u64>(&client.nodes(), "slow", &10u64, Duration::from_secs(1))
        .await;
    for (node, result) in &results {
        println!("client: multicall {node}: {result:?}");
    }
    assert!(results.iter().all(|(_, r)| r.is_ok()));

    // A node that is not connected: refused locally.
    let nowhere = "nowhere@127.0.0.1".parse()?;
    let e = client
        .call::<_, ()>(&nowhere, "quote", &())
        .await
        .expect_err("not connected");
    println!("client: {e}");
    assert!(matches!(e, RpcError::NotConnected { .. }));

    client.shutdown().await;
    shop.shutdown().await;
    Ok(())
}

//! `quicmesh node --metrics ADDR`: serve the node's Prometheus metrics at
//! `GET /metrics` over HTTP/1.1.
//!
//! A scrape endpoint, nothing more: every other path is `404`, every other
//! method on `/metrics` is `405`. It is bounded like the rest of the node:
//! at most [`MAX_CONNECTIONS`] connections at once (more are closed at
//! once), request heads of at most [`MAX_HEAD`] bytes that must arrive
//! within [`HEAD_TIMEOUT`], and no connection kept past
//! [`CONNECTION_TIMEOUT`]. Request bodies are never read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use quicmesh::Node;
use quicmesh::prometheus_client::encoding::prometheus_text;
use quicmesh::prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Scrapers connected at once; Prometheus uses one per target.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers), in bytes.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is served, however many requests it sends.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// The content type of Prometheus' text format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A bound metrics listener: the address it got (port 0 picks one) and the
/// task that serves it, stopped when this is dropped.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    pub(crate) addr: SocketAddr,
    _tasks: JoinSet<()>,
}

/// Binds `addr` and serves `node`'s metrics there until the returned
/// server is dropped.
pub(crate) async fn serve(addr: SocketAddr, node: &Node) -> anyhow::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("metrics listener on {addr}"))?;
    let mut registry = Registry::default();
    node.register_metrics(&mut registry);
    let mut tasks = JoinSet::new();
    tasks.spawn(accept_loop(listener, Arc::new(registry)));
    Ok(MetricsServer {
        addr,
        _tasks: tasks,
    })
}

async fn accept_loop(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next() => continue,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some back.
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "{MAX_CONNECTIONS} metrics connections open already; closing");
            continue;
        };
        let registry = registry.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                tracing::debug!(%remote, "metrics connection: {e}");
            }
            drop(slot);
        });
    }
}

/// The answer to one request.
fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let mut text = String::new();
    if let Err(e) = prometheus_text::encode(&mut text, registry) {
        tracing::warn!("metrics did not encode: {e}");
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics did not encode\n",
        );
    }
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

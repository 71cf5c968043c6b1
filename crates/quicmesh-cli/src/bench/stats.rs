//! Measurements: latency histograms, process CPU time, the report.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// CPU time (user + system, all threads) this process has used, in µs.
pub(crate) fn process_cpu_us() -> u64 {
    cpu_us_of("self")
}

/// CPU time (user + system) of process `pid` ("self" for this one), in
/// microseconds; 0 if it cannot be read.
pub(crate) fn cpu_us_of(pid: &str) -> u64 {
    // Fields 14 and 15 of /proc/PID/stat, after the parenthesised name,
    // in clock ticks of 1/100 s (USER_HZ on Linux).
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // after_name starts at field 3 (state): utime is field 14 → index 11.
    (ticks(11) + ticks(12)) * 10_000
}

/// A histogram of call latencies in microseconds (1 µs to 100 s).
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) label: String,
    pub(crate) payload: usize,
    pub(crate) concurrency: usize,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) calls_per_s: f64,
    /// Payload bytes moved per second, both directions counted once.
    pub(crate) mb_per_s: f64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
    pub(crate) cpu_us_per_call_client: f64,
    pub(crate) cpu_us_per_call_server: f64,
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        label: &str,
        payload: usize,
        concurrency: usize,
        hist: &Histogram<u64>,
        errors: u64,
        elapsed: Duration,
        bytes: u64,
        cpu_client_us: u64,
        cpu_server_us: u64,
    ) -> Self {
        let calls = hist.len();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let per_call = |cpu: u64| {
            if calls == 0 {
                0.0
            } else {
                cpu as f64 / calls as f64
            }
        };
        Self {
            label: label.to_owned(),
            payload,
            concurrency,
            calls,
            errors,
            seconds: secs,
            calls_per_s: calls as f64 / secs,
            mb_per_s: bytes as f64 / secs / 1e6,
            p50_us: hist.value_at_quantile(0.50),
            p90_us: hist.value_at_quantile(0.90),
            p99_us: hist.value_at_quantile(0.99),
            max_us: hist.max(),
            cpu_us_per_call_client: per_call(cpu_client_us),
            cpu_us_per_call_server: per_call(cpu_server_us),
        }
    }
}

/// `64`, `1KiB`, `1MiB` → bytes.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else if let Some(n) = s.strip_suffix('B') {
        (n, 1)
    } else {
        (s, 1)
    };
    num.trim()
        .parse::<usize>()
        .map(|n| n * mult)
        .map_err(|_| format!("invalid size {s:?}: write 64, 1KiB or 1MiB"))
}

pub(crate) fn size_label(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// The summary table.
pub(crate) fn print_table(runs: &[Run]) {
    println!(
        "\n{:<26} {:>7} {:>4} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>14}",
        "mode",
        "payload",
        "conc",
        "calls/s",
        "MB/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "max µs",
        "CPU µs/call c+s"
    );
    for r in runs {
        println!(
            "{:<26} {:>7} {:>4} {:>10.0} {:>9.1} {:>8} {:>8} {:>8} {:>8} {:>6.1}+{:<6.1}{}",
            r.label,
            size_label(r.payload),
            r.concurrency,
            r.calls_per_s,
            r.mb_per_s,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.max_us,
            r.cpu_us_per_call_client,
            r.cpu_us_per_call_server,
            if r.errors > 0 {
                format!("  ({} errors)", r.errors)
            } else {
                String::new()
            }
        );
    }
}

/// Resident memory of process `pid` ("self" for this one), in KiB; 0 if it
/// cannot be read.
pub(crate) fn rss_kib_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes sent on the loopback interface so far (`/proc/net/dev`).
pub(crate) fn loopback_tx_bytes() -> u64 {
    std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|dev| {
            dev.lines().find_map(|l| {
                let (iface, rest) = l.split_once(':')?;
                if iface.trim() != "lo" {
                    return None;
                }
                // Receive: 8 fields, then transmit bytes.
                rest.split_whitespace().nth(8)?.parse().ok()
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1GB").is_err());
        assert_eq!(size_label(1 << 20), "1MiB");
        assert_eq!(size_label(64), "64B");
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = process_cpu_us();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(process_cpu_us() > before);
    }
}

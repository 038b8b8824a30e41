//! Shared harness for berth's end-to-end tests: start the real `berth` binary as a child
//! process against a config, read its address, wait on conditions with deadlines, and
//! kill it for real (SIGKILL) when a test wants a crash.

pub mod browser;
pub mod erp;
pub mod recorder;
pub mod tmpfs;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `berth` binary cargo built next to this test executable.
pub fn berth_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/berth
    let profile_dir = exe.parent().and_then(Path::parent).expect("test runs from target/<profile>/deps");
    let bin = profile_dir.join(format!("berth{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or build with `cargo build -p berth-host`)",
        bin.display()
    );
    bin
}

/// A running `berth serve`.
pub struct Berth {
    child: Child,
    pub base_url: String,
    stderr_log: PathBuf,
}

impl Berth {
    /// Start `berth serve --config CONFIG` and wait until it prints its address.
    pub fn start(config: &Path) -> Berth {
        Self::start_with(config, &[])
    }

    /// The same, with more arguments for `berth` (e.g. `--log-format json`).
    pub fn start_with(config: &Path, args: &[&str]) -> Berth {
        Self::launch(config, args, None)
    }

    /// The same, with the process's open-file limit set to `nofile` (`ulimit -n`).
    pub fn start_with_nofile(config: &Path, nofile: u64) -> Berth {
        Self::launch(config, &[], Some(nofile))
    }

    fn launch(config: &Path, args: &[&str], nofile: Option<u64>) -> Berth {
        let stderr_log = config.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_log).expect("create stderr log");
        let mut command = Command::new(berth_bin());
        command
            .args(args)
            .args(["serve", "--config"])
            .arg(config)
            .env("BERTH_LOG", "info,berth_host=debug,berth_core=debug,berth_ops=debug,berth_api=debug,berth_runtime=debug,berth_capabilities=debug,wasmtime=warn,cranelift=warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("spawn berth");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("berth listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(base_url) => Berth { child, base_url, stderr_log },
            Err(e) => {
                // Say how it ended: an exit status, or the signal that killed it (stdout
                // closes a moment before the process is reaped: wait for that, briefly).
                if matches!(e, std::sync::mpsc::RecvTimeoutError::Disconnected) {
                    exited_within(&child, Duration::from_secs(5));
                }
                let status = child.try_wait();
                let ended = match status {
                    Ok(Some(status)) => {
                        use std::os::unix::process::ExitStatusExt;
                        format!("it exited before saying where it listens ({status}, signal {:?})", status.signal())
                    }
                    _ => format!("it did not say where it listens within 120 s ({e})"),
                };
                let _ = child.kill();
                panic!("berth did not start: {ended}; its log:\n{}", read_tail(&stderr_log));
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The process id (for reading its memory and CPU from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown path runs, as in a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        read_tail(&self.stderr_log)
    }

    /// The whole stderr log so far.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Resident memory now and at its peak since the last [`Berth::reset_peak_memory`]
    /// (or the start), in bytes, from /proc.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kb = |field: &str| {
            status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()).unwrap_or(0) * 1024
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }

    /// Start counting the peak resident memory afresh (`/proc/PID/clear_refs` 5).
    pub fn reset_peak_memory(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").expect("reset the peak RSS");
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(8000);
    let mut s = start;
    while !text.is_char_boundary(s) {
        s += 1;
    }
    text[s..].to_string()
}

/// `[connectors.NAME]` sections for (name, component path) pairs, each granted the
/// loopback address the simulator serves on and bound to its platform (the name, but
/// for the WooCommerce connectors `woo-js` and `woo-c`).
pub fn local_connectors(components: &[(&str, &str)]) -> String {
    components
        .iter()
        .map(|(name, path)| {
            let platform = if name.starts_with("woo") { "woocommerce" } else { name };
            format!("[connectors.{name}]\nplatform = \"{platform}\"\ncomponent = {path:?}\nextra_hosts = [\"127.0.0.1\"]\n")
        })
        .collect()
}

/// Run `berth` with arguments to completion (for start-up failures), with a deadline.
pub fn run_berth(args: &[&str], deadline: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(berth_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait berth") {
            let out = child.wait_with_output().expect("collect output");
            return (
                status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("berth {args:?} did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes of the files under `dir` (a data dir on disk).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// A metric's value in a Prometheus text exposition: the sum of the series whose line
/// starts with `prefix` (name and the labels given, e.g. `name{connector="x"`).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `check` until it returns `Some`, or give up after `deadline`.
pub async fn poll_until<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if start.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An `[admin]` section with one token per role: `erp`, `ops` (operator), `watch`
/// (viewer) and `root` (admin).
pub fn four_roles(erp: &str, operator: &str, viewer: &str, admin: &str) -> String {
    format!(
        "[admin]\ntokens = [{{ name = \"erp\", token = \"{erp}\", role = \"erp\" }}, {{ name = \"ops\", token = \"{operator}\", role = \"operator\" }}, \
         {{ name = \"watch\", token = \"{viewer}\", role = \"viewer\" }}, {{ name = \"root\", token = \"{admin}\", role = \"admin\" }}]\n"
    )
}

/// Whether the alert `fingerprint` comes to be firing (`true`) or not (`false`) within
/// `deadline`, as `token` reads `/v1/alerts`.
pub async fn alert_becomes(berth: &Berth, token: &str, fingerprint: &str, firing: bool, deadline: Duration) -> bool {
    poll_until(deadline, || async {
        let a = get_json_as(token, berth.url("/v1/alerts")).await;
        let found = a["firing"].as_array()?.iter().any(|f| f["fingerprint"] == fingerprint);
        (found == firing).then_some(())
    })
    .await
    .is_some()
}

/// A UTC time of day `secs` from now, for a nightly job the test waits for: the Unix
/// second it falls on and `HH:MM:SS`. Give berth time to start before it: a time already
/// past when its loop starts is tomorrow's.
pub fn time_of_day_in(secs: u64) -> (u64, String) {
    let at_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + secs;
    let day = at_s % 86_400;
    (at_s, format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60))
}

/// Raise this process's own open-file limit to its hard limit (or `want`, if lower);
/// returns the limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let target = (want as libc::rlim_t).min(limit.rlim_max);
        if limit.rlim_cur < target {
            limit.rlim_cur = target;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur as u64
}

/// Write `berth.toml` in `dir`: a loopback listener on any port, `data_dir = "data"`,
/// private addresses allowed (the simulator is on loopback), then `rest`.
/// `[sync]` for tests: three hours of history on the first pull and quick retries.
pub const QUICK_SYNC: &str = "[sync]\ninitial_lookback_hours = 3\nretry_base_ms = 200\nretry_max_ms = 1000\n";

/// `[platforms.X] use_manifest_rate = false` for the four simulated platforms: no
/// host-side bucket at the connectors' declared rates, for benchmarks that measure the
/// host against a simulator told not to throttle either.
pub const NO_MANIFEST_RATES: &str = "[platforms.shopify]\nuse_manifest_rate = false\n[platforms.taobao]\nuse_manifest_rate = false\n\
     [platforms.shopee]\nuse_manifest_rate = false\n[platforms.woocommerce]\nuse_manifest_rate = false\n";

pub fn write_config(dir: &Path, rest: &str) -> PathBuf {
    let path = dir.join("berth.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[http]\nallow_private_addresses = true\n{rest}"
    );
    std::fs::write(&path, text).expect("write berth.toml");
    path
}

/// POST JSON and read the JSON answer, whatever the status (tests assert on it).
pub async fn post_json(client: &reqwest::Client, url: String, body: serde_json::Value) -> serde_json::Value {
    let resp = client.post(&url).json(&body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    resp.json().await.unwrap_or(serde_json::Value::Null)
}

/// Calls per second `platform` sees on the simulator: the time from one call to the
/// `calls`-th after it, so the figure does not depend on where a fixed sampling window
/// happens to fall.
pub async fn observed_rate(sim: &berth_sim::SimHandle, platform: berth_sim::Platform, calls: u64) -> f64 {
    rate_of(calls, || sim.state.stats().get(&platform).map(|s| s.requests).unwrap_or(0)).await
}

/// Events per second of a growing counter, from one increment to the `events`-th after it.
pub async fn rate_of(events: u64, count: impl Fn() -> u64) -> f64 {
    let step = || tokio::time::sleep(Duration::from_millis(5));
    let before = count();
    while count() == before {
        step().await;
    }
    let (t0, n0) = (Instant::now(), count());
    while count() < n0 + events {
        step().await;
    }
    events as f64 / t0.elapsed().as_secs_f64()
}

/// A client that sends `Authorization: Bearer <token>` with every request (a call that
/// sets its own bearer token keeps that one).
pub fn client_as(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a token fits a header");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers).build().expect("client")
}

/// GET a JSON document with a bearer token; `Null` when it cannot be read.
pub async fn get_json_as(token: &str, url: String) -> serde_json::Value {
    match client_as(token).get(&url).send().await {
        Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

/// GET a JSON document (tests assert on it); `Null` when it cannot be read.
pub async fn get_json(url: String) -> serde_json::Value {
    match reqwest::get(&url).await {
        Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

/// The same component with a custom section appended: identical behaviour, another
/// digest — a stand-in for a rebuilt version in deploy tests.
pub fn component_variant(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"berth-test-variant";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// A `berth plugin` report's line for one check: (PASS/FAIL/SKIP, detail's first line).
pub fn kit_check<'a>(report: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    report.lines().find_map(|l| {
        let l = l.trim_start();
        let (outcome, rest) = l.split_once("  ")?;
        let (check, detail) = rest.trim_start().split_once(' ').unwrap_or((rest.trim_start(), ""));
        (check == name).then_some((outcome, detail.trim()))
    })
}

/// Run a `berth` admin command (deploy, rollback, ...) with `BERTH_TOKEN` set; returns
/// (exit code, stdout, stderr).
pub fn berth_admin(url: &str, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(berth_bin())
        .args(args)
        .args(["--url", url])
        .env("BERTH_TOKEN", token)
        .output()
        .expect("run berth");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Call berth's API with an optional bearer token and a raw or JSON body; returns the
/// status and the JSON answer (`Null` when there is none).
pub async fn api_call(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    json: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    if let Some(j) = json {
        req = req.json(&j);
    }
    let resp = req.send().await.expect("berth answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// A simulator config with only Shopify shops (name, seeded orders), a bucket too large
/// to throttle, and `history_hours` of seeded history.
pub fn shopify_sim(seed: u64, history_hours: u32, shops: &[(&str, usize)]) -> berth_sim::SimConfig {
    let mut cfg = berth_sim::SimConfig { seed, history_hours, ..berth_sim::SimConfig::default() };
    cfg.shopify.shops = shops
        .iter()
        .map(|(name, orders)| berth_sim::ShopifyShop { name: name.to_string(), access_token: "tok".into(), orders: *orders })
        .collect();
    cfg.shopify.bucket_size = 10_000;
    cfg.shopify.leak_per_sec = 1000.0;
    cfg.taobao.shops.clear();
    cfg
}

/// A simulator config with only Taobao shops of one app (`k`, secret `s`): (nick, seeded
/// orders), each shop's session `sess-NICK`, `history_hours` of history, and the app
/// banned above `calls_per_second`.
pub fn taobao_sim(seed: u64, history_hours: u32, shops: &[(&str, usize)], calls_per_second: u32) -> berth_sim::SimConfig {
    let mut cfg = berth_sim::SimConfig { seed, history_hours, ..berth_sim::SimConfig::default() };
    cfg.shopify.shops.clear();
    cfg.taobao.apps = vec![berth_sim::TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = shops
        .iter()
        .map(|(n, orders)| berth_sim::TaobaoShop { nick: n.to_string(), app_key: "k".into(), session: format!("sess-{n}"), orders: *orders })
        .collect();
    cfg.taobao.calls_per_window = calls_per_second;
    cfg.taobao.window_ms = 1000;
    cfg
}

/// `[shops.NAME]` of `connector` on the Taobao-like `gateway`, app `k`, polled every
/// second, with `session` and more settings (`, mode = "x"`) after the standard ones.
pub fn taobao_shop(name: &str, connector: &str, gateway: &str, session: &str, extra: &str) -> String {
    format!(
        "[shops.{name}]\nconnector = \"{connector}\"\npoll_interval_secs = 1\n\
         settings = {{ gateway = \"{gateway}\", app_key = \"k\", page_size = \"20\"{extra} }}\n\
         secrets = {{ app_secret = \"s\", session = \"{session}\" }}\n"
    )
}

/// `[shops.acme]`: a Shopify shop on the simulator at `base`, polled every second — the
/// well-behaved neighbour of the isolation tests.
pub fn shopify_neighbour(base: &str) -> String {
    format!(
        "[shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
         settings = {{ base_url = \"{base}/shopify/acme\", page_size = \"5\" }}\nsecrets = {{ access_token = \"tok\" }}\n"
    )
}

/// Set one SKU of `shop` to `quantity` through berth's stock API (as the ERP, with
/// `token` when berth has tokens) and wait until the platform (the simulator) holds that
/// quantity: the shop's stock still reaches it.
pub async fn stock_reaches(sim: &berth_sim::SimHandle, berth: &Berth, token: Option<&str>, platform: berth_sim::Platform, shop: &str, quantity: u32, deadline: Duration) -> bool {
    let Some(sku) = sim.state.stock(platform, shop).into_iter().map(|i| i.sku).next() else { return false };
    let body = serde_json::json!({ "updates": [{ "sku": sku, "quantity": quantity }] });
    let client = token.map(client_as).unwrap_or_default();
    let answer = post_json(&client, berth.url(&format!("/v1/shops/{shop}/stock")), body).await;
    if !answer.to_string().contains("queued") {
        return false;
    }
    poll_until(deadline, || async { sim.state.stock(platform, shop).iter().any(|i| i.sku == sku && i.quantity == quantity).then_some(()) })
        .await
        .is_some()
}

/// `[connectors.hostile]` for the hostile fixture at `component`, its breaker off (the
/// isolation tests measure each call's containment) and more `limits` lines.
pub fn hostile_connector(component: &str, limits: &str) -> String {
    format!("[connectors.hostile]\ncomponent = {component:?}\n[connectors.hostile.limits]\nbreaker = false\n{limits}")
}

/// `[shops.NAME]` of the hostile connector, polled every second, with `settings`
/// (e.g. `mode = "kv-churn"`).
pub fn hostile_shop(name: &str, settings: &str) -> String {
    format!("[shops.{name}]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = {{ {settings} }}\n")
}

/// Block until `child` has exited (it can then be reaped) or `within` passes: a poll on
/// the process's pidfd, which becomes readable when the process exits.
fn exited_within(child: &std::process::Child, within: Duration) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the
    // child is not reaped yet, so its pid still names it.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as libc::c_int;
    if fd < 0 {
        return;
    }
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; the descriptor is ours and closed right after.
    unsafe {
        libc::poll(&mut pollfd, 1, within.as_millis().min(i32::MAX as u128) as libc::c_int);
        libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_that_exits_is_seen_without_polling() {
        let mut child = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn().expect("sh");
        super::exited_within(&child, std::time::Duration::from_secs(30));
        assert_eq!(child.try_wait().expect("try_wait").and_then(|s| s.code()), Some(3));
        let mut long = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        super::exited_within(&long, std::time::Duration::from_millis(50));
        assert!(long.try_wait().expect("try_wait").is_none(), "a running process is not taken for exited");
        long.kill().expect("kill");
        long.wait().expect("reap");
    }
}

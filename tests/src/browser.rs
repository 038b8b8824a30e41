//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open a
//! page, evaluate JavaScript in it, read what it renders. The browser runs with a fresh
//! profile and without background services, and is killed when dropped.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

pub struct Page {
    socket: Socket,
    next_id: u64,
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in ["/usr/bin", "/usr/local/bin"] {
            let p = PathBuf::from(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("chromium is not installed (Debian package chromium; scripts/toolchains installs it)");
}

impl Browser {
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it chose to DevToolsActivePort in the profile.
        let file = profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&file).ok().and_then(|t| t.lines().next()?.trim().parse::<u16>().ok()) {
                break p;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "chromium did not open its DevTools port within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        Browser { child, port, _profile: profile }
    }

    /// A DevTools connection to a new tab at `url`.
    async fn tab(&self, url: &str) -> Page {
        let target: Value = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{}/json/new?{url}", self.port))
            .send()
            .await
            .expect("DevTools answers")
            .json()
            .await
            .expect("DevTools answers JSON");
        let ws = target["webSocketDebuggerUrl"].as_str().unwrap_or_else(|| panic!("no page socket in {target}"));
        let (socket, _) = tokio_tungstenite::connect_async(ws).await.expect("connect to the page");
        Page { socket, next_id: 1 }
    }

    /// A new tab at `url`.
    pub async fn open(&self, url: &str) -> Page {
        let mut page = self.tab(url).await;
        page.until_loaded(url).await;
        page
    }

    /// A new tab at `url` whose first `window.prompt` is answered with `answer`, as a
    /// person would type it; returns the page and what the prompt asked.
    pub async fn open_answering_prompt(&self, url: &str, answer: &str) -> (Page, String) {
        let mut page = self.tab("about:blank").await;
        page.call("Page.enable", json!({})).await;
        let id = page.send("Page.navigate", json!({"url": url})).await;
        // The dialog may open before or after the navigation's answer arrives.
        let (mut navigated, mut asked) = (false, None);
        let started = Instant::now();
        while !navigated || asked.is_none() {
            assert!(started.elapsed() < Duration::from_secs(30), "{url} showed no prompt within 30 s");
            let Some(Ok(Message::Text(text))) = page.socket.next().await else { continue };
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            if v["id"] == id {
                navigated = true;
            } else if v["method"] == "Page.javascriptDialogOpening" {
                assert_eq!(v["params"]["type"], "prompt", "{v}");
                asked = Some(v["params"]["message"].as_str().unwrap_or_default().to_string());
            }
        }
        page.call("Page.handleJavaScriptDialog", json!({"accept": true, "promptText": answer})).await;
        page.until_loaded(url).await;
        (page, asked.unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page {
    async fn until_loaded(&mut self, url: &str) {
        let started = Instant::now();
        while self.eval("document.readyState === 'complete' && location.href !== 'about:blank'").await != true {
            assert!(started.elapsed() < Duration::from_secs(30), "{url} did not load within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send a DevTools call without waiting for its answer; returns its id.
    async fn send(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::Text(msg.into())).await.expect("send to the page");
        id
    }

    /// Call a DevTools method and return its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        while let Some(m) = self.socket.next().await {
            let Ok(Message::Text(text)) = m else { continue };
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
        panic!("the page closed its socket during {method}");
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true})).await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("`{expression}` threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// The rows of a table as the page renders them: each cell's visible text.
    pub async fn table(&mut self, id: &str) -> Vec<Vec<String>> {
        let v = self
            .eval(&format!(
                "[...document.querySelectorAll('#{id} tbody tr')].map(tr => [...tr.cells].map(td => td.innerText.trim()))"
            ))
            .await;
        serde_json::from_value(v).unwrap_or_default()
    }

    /// The text of an element as the page renders it ("" when hidden or absent).
    pub async fn text(&mut self, selector: &str) -> String {
        let v = self.eval(&format!("(document.querySelector({selector:?}) || {{innerText: ''}}).innerText")).await;
        v.as_str().unwrap_or("").trim().to_string()
    }
}

//! Headless Chromium (Debian's `chromium`, or `TERN_CHROMIUM`) driven over
//! the DevTools protocol, for tests that use a page as a person would:
//! load it, type, click, answer `confirm()`, read what it shows, take a
//! screenshot.
//!
//! The browser is started by the test with a profile in a scratch
//! directory and `--remote-debugging-port=0`; the port it picked is read
//! from the profile's `DevToolsActivePort`, the page's WebSocket from
//! `/json/list`. Commands go over that one WebSocket (tungstenite), and
//! events that arrive meanwhile are handled there: a JavaScript dialog is
//! answered as the test said, exceptions are kept for [`Browser::problems`].
//! Every wait is bounded; dropping the browser closes it, then kills it by
//! PID if it lingers.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tern::io::clock;
use tungstenite::{Message, WebSocket};

use super::{STOP_TIMEOUT, require_tool, wait_bounded};

/// How long Chromium may take to start and offer its DevTools port.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one DevTools command may take to be answered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a socket read waits before the deadline is looked at again.
const READ_STEP: Duration = Duration::from_millis(250);
const POLL_STEP: Duration = Duration::from_millis(100);
/// Upper bound on the turns of every loop here, on top of its deadline.
const MAX_TURNS: usize = 100_000;
/// The window a page is laid out in.
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 900;

/// Chromium's command: `TERN_CHROMIUM`, or `chromium` on `PATH`. `None`
/// (the test should return) when it is missing, unless
/// `TERN_REQUIRE_INTEROP=1` makes that a failure.
pub fn find() -> Option<String> {
    if let Ok(path) = std::env::var("TERN_CHROMIUM") {
        return Some(path);
    }
    require_tool("chromium", "chromium").then(|| "chromium".to_owned())
}

/// One headless Chromium with one page, under the test's control.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    /// Whether the next `confirm()` is accepted.
    accept_dialogs: bool,
    /// The messages of the dialogs answered so far.
    pub dialogs: Vec<String>,
    /// Uncaught exceptions and console errors of the page.
    problems: Vec<String>,
}

impl Browser {
    /// Starts Chromium on `about:blank`, with a profile of its own under the
    /// target directory, and connects to its page.
    pub fn start(chromium: &str) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let profile = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap_or_else(|e| panic!("creating {}: {e}", profile.display()));
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={WIDTH},{HEIGHT}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {chromium}: {e}"));
        let mut starting = Starting { child: Some(child), profile: profile.clone() };
        let port = starting.devtools_port();
        let socket = connect_to_page(port);
        let child = starting.child.take().expect("taken once, here");
        let mut browser = Self {
            child,
            profile,
            socket,
            next_id: 0,
            accept_dialogs: true,
            dialogs: Vec::new(),
            problems: Vec::new(),
        };
        for domain in ["Page.enable", "Runtime.enable"] {
            browser.call(domain, json!({}));
        }
        browser
    }

    /// Loads `url` and waits for its `load` event.
    pub fn navigate(&mut self, url: &str) {
        let answer = self.call("Page.navigate", json!({ "url": url }));
        assert!(answer.get("errorText").is_none(), "loading {url}: {answer}");
        self.wait_for(&format!("{url} to load"), "document.readyState === 'complete'");
    }

    /// Runs `script` before any script of each page that loads from now on
    /// (DevTools runs it whatever the page's Content-Security-Policy says).
    pub fn before_each_page(&mut self, script: &str) {
        self.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": script }));
    }

    /// The value of the JavaScript `expression` (awaited if a promise).
    pub fn evaluate(&mut self, expression: &str) -> Value {
        let answer = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }));
        if let Some(exception) = answer.get("exceptionDetails") {
            panic!("evaluating {expression}: {exception}");
        }
        answer["result"].get("value").cloned().unwrap_or(Value::Null)
    }

    /// Evaluates `expression` until it is truthy, and returns that value.
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = clock::now() + COMMAND_TIMEOUT;
        let mut last = Value::Null;
        for _ in 0..MAX_TURNS {
            last = self.evaluate(expression);
            let truthy = match &last {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(_) | Value::Object(_) => true,
            };
            if truthy {
                return last;
            }
            if clock::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL_STEP);
        }
        panic!(
            "waited {COMMAND_TIMEOUT:?} for {what} ({expression}); last: {last}; page problems: {:?}",
            self.problems
        );
    }

    /// A left click in the middle of the element `selector` picks, as a
    /// mouse makes it.
    pub fn click(&mut self, selector: &str) {
        self.click_held(selector, Duration::ZERO);
    }

    /// The same, with the button held down for `hold` between press and
    /// release, as a slow hand does.
    pub fn click_held(&mut self, selector: &str, hold: Duration) {
        let quoted = serde_json::to_string(selector).expect("a string serializes");
        let centre = self.evaluate(&format!(
            "(() => {{ const e = document.querySelector({quoted}); if (!e) return null; e.scrollIntoView({{block: 'center'}}); \
             const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (Some(x), Some(y)) = (centre[0].as_f64(), centre[1].as_f64()) else {
            panic!("nothing to click: no {selector} in the page");
        };
        for kind in ["mousePressed", "mouseReleased"] {
            if kind == "mouseReleased" {
                std::thread::sleep(hold);
            }
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1 }),
            );
        }
    }

    /// Types `text` into the focused element, as a keyboard does.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// Sets whether the page's next dialogs (`confirm()`) are accepted.
    pub fn answer_dialogs(&mut self, accept: bool) {
        self.accept_dialogs = accept;
    }

    /// A PNG of the whole page, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let height = self.evaluate("document.documentElement.scrollHeight").as_u64().unwrap_or(u64::from(HEIGHT));
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": WIDTH, "height": height.max(u64::from(HEIGHT)), "deviceScaleFactor": 1, "mobile": false }),
        );
        // One frame for the page to lay itself out (and redraw its canvases) at that size.
        self.evaluate("new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 100)))");
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            shot["data"].as_str().expect("a screenshot has data"),
        )
        .expect("the screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        self.call("Emulation.clearDeviceMetricsOverride", json!({}));
    }

    /// The page's uncaught exceptions and console errors so far.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Sends one command and waits for its answer, handling the events that
    /// come first.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({ "id": id, "method": method, "params": params }));
        let deadline = clock::now() + COMMAND_TIMEOUT;
        for _ in 0..MAX_TURNS {
            if clock::now() >= deadline {
                break;
            }
            let Some(message) = self.receive() else { continue };
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    panic!("DevTools {method}: {error}");
                }
                return message["result"].clone();
            }
            self.handle_event(&message);
        }
        panic!("DevTools {method}: no answer in {COMMAND_TIMEOUT:?}");
    }

    fn handle_event(&mut self, message: &Value) {
        let params = &message["params"];
        match message["method"].as_str() {
            // The command that opened it is answered only once this is.
            Some("Page.javascriptDialogOpening") => {
                self.dialogs.push(params["message"].as_str().unwrap_or_default().to_owned());
                self.next_id += 1;
                let answer = json!({ "accept": self.accept_dialogs });
                self.send(json!({ "id": self.next_id, "method": "Page.handleJavaScriptDialog", "params": answer }));
            }
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                let text = details["exception"]["description"].as_str().or(details["text"].as_str());
                self.problems.push(format!("exception: {}", text.unwrap_or("?")));
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.problems.push(format!("console.error: {}", params["args"]));
            }
            _ => {}
        }
    }

    fn send(&mut self, message: Value) {
        self.socket.send(Message::text(message.to_string())).expect("DevTools WebSocket: send");
    }

    /// The next message, or `None` when none came within [`READ_STEP`].
    fn receive(&mut self) -> Option<Value> {
        match self.socket.read() {
            Ok(Message::Text(text)) => Some(serde_json::from_str(text.as_str()).expect("DevTools sends JSON")),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                None
            }
            Err(e) => panic!("DevTools WebSocket: {e}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.next_id += 1;
        let close = json!({ "id": self.next_id, "method": "Browser.close", "params": {} });
        let _ = self.socket.send(Message::text(close.to_string()));
        stop(&mut self.child, &self.profile);
    }
}

/// Chromium until it is connected to: killed if the test fails meanwhile.
struct Starting {
    child: Option<Child>,
    profile: PathBuf,
}

impl Starting {
    /// The port Chromium writes into its profile once DevTools listens.
    fn devtools_port(&mut self) -> u16 {
        let file = self.profile.join("DevToolsActivePort");
        let deadline = clock::now() + START_TIMEOUT;
        for _ in 0..MAX_TURNS {
            if let Some(port) = std::fs::read_to_string(&file).ok().and_then(|s| s.lines().next()?.parse().ok()) {
                return port;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "Chromium exited before it listened: {exited:?}");
            assert!(clock::now() < deadline, "Chromium wrote no {} within {START_TIMEOUT:?}", file.display());
            std::thread::sleep(POLL_STEP);
        }
        panic!("Chromium wrote no {}", file.display());
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, &self.profile);
        }
    }
}

/// Waits for Chromium to exit (after `Browser.close`), kills it by PID if it
/// does not, and removes its profile.
fn stop(child: &mut Child, profile: &Path) {
    if wait_bounded(child, STOP_TIMEOUT).is_none() {
        let _ = child.kill();
        let _ = wait_bounded(child, STOP_TIMEOUT);
    }
    let _ = std::fs::remove_dir_all(profile);
}

/// The WebSocket of the browser's first page.
fn connect_to_page(port: u16) -> WebSocket<TcpStream> {
    let list = format!("http://127.0.0.1:{port}/json/list");
    let deadline = clock::now() + START_TIMEOUT;
    let mut url = None;
    for _ in 0..MAX_TURNS {
        let targets: Option<Value> = ureq::get(&list).call().ok().and_then(|mut r| r.body_mut().read_json().ok());
        url = targets.as_ref().and_then(Value::as_array).and_then(|targets| {
            targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        });
        if url.is_some() || clock::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL_STEP);
    }
    let url = url.unwrap_or_else(|| panic!("Chromium listed no page at {list} within {START_TIMEOUT:?}"));
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to DevTools");
    stream.set_read_timeout(Some(COMMAND_TIMEOUT)).expect("read timeout");
    stream.set_write_timeout(Some(COMMAND_TIMEOUT)).expect("write timeout");
    let (socket, _) =
        tungstenite::client(url.as_str(), stream).unwrap_or_else(|e| panic!("DevTools WebSocket {url}: {e}"));
    // From now on a read gives up often, so that every wait sees its deadline.
    socket.get_ref().set_read_timeout(Some(READ_STEP)).expect("read timeout");
    socket
}

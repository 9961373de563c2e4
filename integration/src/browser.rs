//! A real browser for tests: Debian's headless Chromium driven through chromedriver over
//! the W3C WebDriver protocol (JSON over HTTP, spoken here with the harness's `ureq`, so
//! the tests need no async WebDriver stack). Screenshots are whole pages.

use crate::patience::eventually;
use base64::Engine;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use ureq::Agent;

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    agent: Agent,
    session_url: String,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn path_of(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.to_owned())
}

impl Browser {
    /// Starts chromedriver (`CHROMEDRIVER`, default /usr/bin/chromedriver) and a headless
    /// Chromium (`CHROMIUM`, default /usr/bin/chromium) `width` pixels wide.
    pub fn start(width: u32) -> Result<Browser, String> {
        let driver_bin = path_of("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = path_of("CHROMIUM", "/usr/bin/chromium");
        for bin in [&driver_bin, &chromium] {
            if !Path::new(bin).exists() {
                return Err(format!(
                    "{bin} is missing: apt-get install -y chromium chromium-driver"
                ));
            }
        }
        let port = free_port()?;
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{driver_bin}: {e}"))?;
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            agent,
            session_url: String::new(),
        };
        eventually("chromedriver to answer", || {
            let mut r = browser.agent.get(&format!("{base}/status")).call().ok()?;
            let v: Value = r.body_mut().read_json().ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        })?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                format!("--window-size={width},900"), "--lang=en-US"]}}}});
        let value = browser.send("POST", &format!("{base}/session"), Some(caps))?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no WebDriver session: {value}"))?;
        browser.session_url = format!("{base}/session/{id}");
        Ok(browser)
    }

    fn send(&self, method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
        let result = match method {
            "GET" => self.agent.get(url).call(),
            "DELETE" => self.agent.delete(url).call(),
            _ => self
                .agent
                .post(url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut resp = result.map_err(|e| format!("WebDriver {method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let v: Value = resp
            .body_mut()
            .read_json()
            .map_err(|e| format!("WebDriver {method} {url}: {e}"))?;
        if status >= 400 {
            return Err(format!("WebDriver {method} {url}: {status} {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.send(method, &format!("{}{path}", self.session_url), body)
    }

    /// Loads `url` and waits for it.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    pub fn current_url(&self) -> Result<String, String> {
        Ok(self
            .command("GET", "/url", None)?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    fn find(&self, css: &str) -> Result<String, String> {
        let v = self.command(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no element {css}: {v}"))
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> Result<usize, String> {
        let v = self.command(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(v.as_array().map_or(0, Vec::len))
    }

    /// Types `text` into the element `css`.
    pub fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let id = self.find(css)?;
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .map(|_| ())
    }

    /// Clicks the element `css` (an `<option>` click selects it).
    pub fn click(&self, css: &str) -> Result<(), String> {
        let id = self.find(css)?;
        self.command("POST", &format!("/element/{id}/click"), None)
            .map(|_| ())
    }

    /// The rendered text of the element `css`.
    pub fn text(&self, css: &str) -> Result<String, String> {
        let id = self.find(css)?;
        Ok(self
            .command("GET", &format!("/element/{id}/text"), None)?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// The rendered text of the element `css` once the page has one (after a click that
    /// submits a form, the next page may still be loading).
    pub fn wait_text(&self, css: &str) -> Result<String, String> {
        let mut last = String::new();
        eventually(&format!("an element {css}"), || match self.text(css) {
            Ok(t) => Some(t),
            Err(e) => {
                last = e;
                None
            }
        })
        .map_err(|e| format!("{e}: {last}"))
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value, String> {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The cookie `name` of the current page (HttpOnly ones included), as WebDriver
    /// describes it (`value`, `httpOnly`, `sameSite`...).
    pub fn cookie(&self, name: &str) -> Result<Value, String> {
        self.command("GET", &format!("/cookie/{name}"), None)
    }

    /// Saves a PNG of the whole page (the window grown to the page's height) to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        let size = self.execute(
            "return [Math.max(document.documentElement.scrollWidth, window.innerWidth, ...Array.from(document.querySelectorAll('svg')).map(e => e.getBoundingClientRect().right + 40)), document.documentElement.scrollHeight];",
            json!([]),
        )?;
        let number = |v: &Value, default: f64| v.as_f64().unwrap_or(default) as u64;
        let (w, h) = (
            number(&size[0], 1400.0).clamp(800, 4000),
            number(&size[1], 900.0).clamp(600, 8000),
        );
        let _ = self.command(
            "POST",
            "/window/rect",
            Some(json!({"width": w, "height": h + 120})),
        );
        let b64 = self.command("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .map_err(|e| format!("screenshot: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))?;
        let _ = self.command(
            "POST",
            "/window/rect",
            Some(json!({"width": w, "height": 900})),
        );
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session_url.is_empty() {
            let _ = self.agent.delete(&self.session_url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

//! A real headless Chromium (Debian package `chromium`) loading an admin page, for tests that
//! assert on the DOM after the page's own scripts ran.

use std::process::Command;

/// The rendered rows of the list page (the embedded JSON also holds every path, so assertions
/// about what is shown look here).
pub fn table_body(dom: &str) -> &str {
    let start = dom
        .find("<tbody>")
        .unwrap_or_else(|| panic!("no table: {dom}"));
    let end = dom[start..]
        .find("</tbody>")
        .map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

/// The DOM after Chromium loaded `url` and ran its scripts.
pub async fn rendered_dom(url: String) -> String {
    tokio::task::spawn_blocking(move || {
        // One profile per run: two Chromiums on one profile refuse to start.
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile =
            std::env::temp_dir().join(format!("ragscope-chromium-{}-{run}", std::process::id()));
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .expect("chromium is installed (Debian package chromium; see .ci/run)");
        let _ = std::fs::remove_dir_all(&profile);
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .expect("chromium task")
}

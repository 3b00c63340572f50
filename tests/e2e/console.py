"""Drive the reviewers' console in real headless Chromium, as two reviewers.

Run by tests/e2e/console.rs, which starts Kafka topics, the projector and
intake, and proposes the instances. This script does what the reviewers do
in their browsers: each generates a key in the page, the principals lines
read off the pages are registered (the file rewritten, intake sent SIGHUP),
both sign in by signing a challenge, and both approve through the decision
form after checking the exact bytes they sign. It also opens an instance
whose rationale and context ref are hostile and checks they are only text.

Prints one JSON line on success: the key ids and what it measured.
"""

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import time

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PREFIX = "warrant.decision.v1\n"
LINE = re.compile(r'^keys: \["ed25519:([0-9a-f]{64})"\]$')


def log(message):
    print(f"[console.py {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Reviewer:
    """One reviewer's browser context and page, with what went wrong in it."""

    def __init__(self, browser, name, base):
        self.name = name
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.dialogs = []
        self.errors = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("console", self._console)
        self.key_id = None
        self.public_hex = None

    def _dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _console(self, message):
        text = message.text
        # A 401 before signing in is expected; a CSP refusal never is.
        if message.type == "error" and "Failed to load resource" not in text:
            self.errors.append(f"console error: {text}")

    def goto(self, hash_route):
        self.page.goto(f"{self.base}/console/{hash_route}")

    def generate_key(self):
        self.goto("#/keys")
        self.page.click("#generate-key")
        line = self.page.locator("#principals-line").text_content().strip()
        match = LINE.match(line)
        assert match, f"{self.name}: the page shows no principals line: {line!r}"
        self.public_hex = match.group(1)
        self.key_id = self.page.locator("#key-id").text_content().strip()
        # The key id is the first 16 hex digits of SHA-256 of the raw key.
        expected = hashlib.sha256(bytes.fromhex(self.public_hex)).hexdigest()[:16]
        assert self.key_id == expected, f"{self.name}: key id {self.key_id} != {expected}"
        # The private key in IndexedDB is non-extractable: even this page cannot export it.
        stored = self.page.evaluate(
            """() => new Promise((resolve, reject) => {
                const open = indexedDB.open("warrant-console", 1);
                open.onerror = () => reject(open.error);
                open.onsuccess = () => {
                  const get = open.result.transaction("keys").objectStore("keys").get("current");
                  get.onsuccess = async () => {
                    const key = get.result.pair.privateKey;
                    let exported = true;
                    try { await crypto.subtle.exportKey("pkcs8", key); } catch { exported = false; }
                    resolve({ extractable: key.extractable, algorithm: key.algorithm.name,
                              usages: key.usages, exported });
                  };
                };
              })"""
        )
        assert stored == {
            "extractable": False,
            "algorithm": "Ed25519",
            "usages": ["sign"],
            "exported": False,
        }, f"{self.name}: {stored}"
        log(f"{self.name} generated key {self.key_id}")
        return line

    def sign_in(self, deadline_s=20):
        """Sign in; retried while intake may still be reloading the principals."""
        self.goto("#/keys")
        started = time.monotonic()
        while True:
            self.page.click("#sign-in")
            principal = self.page.locator("#session-principal")
            status = self.page.locator("#key-status")
            self.page.wait_for_function(
                "() => document.querySelector('#session-principal') ||"
                " document.querySelector('#key-status')?.textContent",
            )
            if principal.count():
                assert principal.text_content() == self.name, principal.text_content()
                log(f"{self.name} signed in")
                return
            text = status.text_content()
            assert "unknown_key" in text, f"{self.name}: sign-in failed: {text}"
            assert time.monotonic() - started < deadline_s, f"{self.name}: key never registered"
            time.sleep(0.3)

    def approve(self, instance, digest, justification, constraints="", max_executions="",
                screenshot=None):
        """Open the instance from the queue, preview, check the bytes, sign and send."""
        self.goto("#/queue")
        link = self.page.locator(f'a.instance-link[href="#/instance/{instance}"]')
        link.click()
        assert self.page.locator("#action-digest").text_content() == digest
        self.page.fill("#justification", justification)
        self.page.select_option("#verdict", "APPROVE")
        if constraints:
            self.page.fill("#constraints", constraints)
        if max_executions:
            self.page.fill("#max-executions", str(max_executions))
        self.page.click("#preview-button")
        shown = self.page.locator("#signed-bytes").text_content()
        assert shown.startswith(PREFIX), repr(shown)
        body_text = shown[len(PREFIX):]
        body = json.loads(body_text)
        want_constraints = dict(
            line.split("=", 1) for line in constraints.splitlines() if line.strip()
        )
        assert body == {
            "instance_id": instance,
            "action_digest": digest,
            "verdict": "APPROVE",
            "justification": justification,
            "scope": {
                "constraints": want_constraints,
                "not_after": None,
                "max_executions": int(max_executions) if max_executions else None,
            },
            "evidence_refs": [],
            "timestamp": body["timestamp"],
            "key_id": self.key_id,
        }, body
        assert abs(body["timestamp"] - time.time()) < 60, body["timestamp"]
        # Compact JSON in the documented field order: what is shown is what is sent.
        assert body_text == json.dumps(body, separators=(",", ":"), ensure_ascii=False), body_text
        if screenshot:
            self.page.locator("#decide").screenshot(path=screenshot)

        with self.page.expect_request(
            lambda r: r.method == "POST" and r.url.endswith(f"/v1/instances/{instance}/decisions")
        ) as sent:
            self.page.click("#sign-send")
        request = sent.value
        assert request.post_data_buffer == body_text.encode(), "the bytes sent are not the preview"
        headers = request.headers
        assert headers["x-warrant-timestamp"] == str(body["timestamp"]), headers
        assert re.fullmatch(r"ed25519=[0-9a-f]{128}", headers["x-warrant-signature"]), headers
        accepted = self.page.locator("#decision-accepted").text_content()
        assert f"On the log as {self.name}" in accepted, accepted
        log(f"{self.name} approved {instance}")

    def check_clean(self):
        assert not self.dialogs, f"{self.name}: dialogs fired: {self.dialogs}"
        assert not self.errors, f"{self.name}: {self.errors}"


def register(principals, reviewers, intake_pid):
    """Add each reviewer's principals line under their entry, then SIGHUP intake."""
    text = open(principals, encoding="utf-8").read()
    for reviewer in reviewers:
        entry = f"  - principal: {reviewer.name}\n"
        assert text.count(entry) == 1, f"no single entry for {reviewer.name}"
        line = f'    keys: ["ed25519:{reviewer.public_hex}"]\n'
        text = text.replace(entry, entry + line)
    with open(principals, "w", encoding="utf-8") as out:
        out.write(text)
    os.kill(intake_pid, signal.SIGHUP)
    log("principals written, intake sent SIGHUP")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="intake, e.g. http://127.0.0.1:8080")
    parser.add_argument("--principals", required=True)
    parser.add_argument("--intake-pid", type=int, required=True)
    parser.add_argument("--approve", required=True, help="instance the two reviewers approve")
    parser.add_argument("--digest", required=True, help="its action digest")
    parser.add_argument("--hostile", required=True, help="instance with hostile rationale and refs")
    parser.add_argument("--artifacts", required=True, help="where screenshots go")
    args = parser.parse_args()
    os.makedirs(args.artifacts, exist_ok=True)
    timings = {}
    started = time.monotonic()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        timings["launch_s"] = round(time.monotonic() - started, 2)
        log(f"chromium {browser.version} up")
        alice = Reviewer(browser, "alice", args.url)
        bob = Reviewer(browser, "bob", args.url)
        lines = [alice.generate_key(), bob.generate_key()]
        alice.page.screenshot(path=os.path.join(args.artifacts, "console-keys.png"))
        register(args.principals, [alice, bob], args.intake_pid)
        alice.sign_in()
        bob.sign_in()

        # The queue, as alice sees it: both instances waiting, nobody decided yet.
        alice.goto("#/queue")
        alice.page.locator(f'a.instance-link[href="#/instance/{args.approve}"]').wait_for()
        alice.page.locator(f'a.instance-link[href="#/instance/{args.hostile}"]').wait_for()
        row = alice.page.locator("#queue tbody tr", has=alice.page.locator(
            f'a[href="#/instance/{args.approve}"]'))
        assert "0 of 2" in row.text_content(), row.text_content()
        assert "left" in row.text_content() and "ago" in row.text_content(), row.text_content()
        alice.page.screenshot(path=os.path.join(args.artifacts, "console-queue.png"), full_page=True)
        # The role filter: nothing in this queue is for a role no rule names.
        alice.page.fill("#queue-filters input[name=role]", "nobody-has-this-role")
        alice.page.click("#queue-filters button[type=submit]")
        alice.page.wait_for_function("() => location.hash.includes('role=nobody-has-this-role')")
        alice.page.get_by_text("No instance is AWAITING_DECISION for this filter.").wait_for()

        alice.approve(args.approve, args.digest, "heap profile confirms the leak",
                      constraints="strategy=rolling",
                      screenshot=os.path.join(args.artifacts, "console-preview.png"))
        # Bob's page is open on the instance while he decides; it polls.
        bob.approve(args.approve, args.digest, "ok for a rolling restart", max_executions=1)
        # Without a reload, both pages see the fold's answer.
        for reviewer in (alice, bob):
            if reviewer is alice:
                alice.goto(f"#/instance/{args.approve}")
            reviewer.page.locator(".headline .status", has_text="AUTHORIZED").wait_for()
        page = bob.page
        decisions = page.locator("section", has=page.locator("h2", has_text="Decisions"))
        rows = decisions.locator("tbody tr")
        assert rows.count() == 2, rows.count()
        for index, name in enumerate(["alice", "bob"]):
            text = rows.nth(index).text_content()
            assert name in text and "applied" in text and "signed by the reviewer" in text, text
        assert page.locator("#decide").get_by_text("No decision is open").count() == 1
        page.screenshot(path=os.path.join(args.artifacts, "console-instance.png"), full_page=True)

        # Hostile text from the log is only ever text.
        alice.goto(f"#/instance/{args.hostile}")
        rationale = alice.page.locator("#rationale")
        rationale.wait_for()
        assert rationale.text_content() == "<script>alert(1)</script>", rationale.text_content()
        refs = alice.page.locator("#context-refs li")
        assert refs.count() == 2, refs.count()
        hostile_ref = refs.nth(0)
        assert hostile_ref.locator("a").count() == 0, hostile_ref.inner_html()
        assert hostile_ref.locator("span.uri").text_content() == "javascript:alert(1)"
        assert "<img src=x onerror=alert(2)>" in hostile_ref.text_content()
        assert refs.nth(1).locator("a").get_attribute("href") == "https://runbooks.example/restart"
        dom = alice.page.evaluate(
            """() => ({
                scripts: document.scripts.length,
                images: document.images.length,
                jsLinks: [...document.querySelectorAll('[href], [src]')]
                  .map((e) => e.getAttribute('href') ?? e.getAttribute('src'))
                  .filter((v) => /^\\s*javascript:/i.test(v)).length,
                handlers: [...document.querySelectorAll('*')]
                  .filter((e) => [...e.attributes].some((a) => a.name.startsWith('on'))).length,
            })"""
        )
        assert dom == {"scripts": 1, "images": 0, "jsLinks": 0, "handlers": 0}, dom
        alice.page.wait_for_timeout(500)
        alice.page.screenshot(path=os.path.join(args.artifacts, "console-hostile.png"), full_page=True)

        for reviewer in (alice, bob):
            reviewer.check_clean()
        browser.close()

    timings["total_s"] = round(time.monotonic() - started, 2)
    print(json.dumps({
        "keys": {"alice": alice.key_id, "bob": bob.key_id},
        "lines": lines,
        "timings": timings,
    }))


if __name__ == "__main__":
    main()

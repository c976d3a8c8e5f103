#!/usr/bin/env python3
"""Drives the web console in Debian's chromium (headless) through selenium and chromedriver,
for tests/tests/e2e_console.rs.

Reads one JSON command a line on stdin and answers one JSON line on stdout, so the Rust test
decides what happens when (start a client, click, check the bucket). Every wait gives up after
TIMEOUT seconds and answers {"error": ..., "page": <the page's text>}. What the console shows
is read from the DOM by the ids and classes of gateway/src/console/index.html and app.js.

Commands (op and arguments):
  open url                     load the page; answers which view shows ("login" or "console")
  login user password          submit the login form; answers {"ok", "message", "who"}
  wait_row body key            wait for the row `key` in the table body `body`; answers its cells
  wait_no_row body key         wait for that row to go
  wait_cell body key cls text  wait until the row's cell of class `cls` contains `text`
  wait_change body key cls old wait until that cell's text is no longer `old`
  click body key button        click the button of class `button` in that row; answers the
                               notice the console shows after it
  add_user name password home protocols
                               fill in the user form and submit it; answers the notice and
                               the form's own message
  edit_user name password      "Edit" in the user's row, a new password in the form, "Save
                               changes"; answers the notice and the form's own message
  buttons                      the change controls on the page: visible buttons other than
                               "Log out", and whether the user form shows
  fetch method path csrf       a fetch() from the page (its cookie; the CSRF token only when
                               csrf is true): {"status", "body"}
  logout                       click "Log out"
  logout_mid_refresh           hold the page's next GET /api/v1/sessions answer, click "Log out"
                               and let the held answer through once the logout's answer has
                               come (a refresh under way when the user logged out)
  wait_login                   wait for the login form (the session ended); answers its message

Only a wait that timed out answers with an "error" key.
  quit
"""

import json
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

TIMEOUT = 30


def start():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-extensions", "--window-size=1400,1000",
              # Only loopback: the console must work with no network at all.
              "--proxy-server=direct://", "--proxy-bypass-list=*"]:
        opts.add_argument(a)
    # Debian's chromedriver, matched to its chromium; never Selenium Manager's download.
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


class Timeout(Exception):
    pass


def wait(driver, what, f):
    deadline = time.time() + TIMEOUT
    while True:
        try:
            v = f()
            if v is not None and v is not False:
                return v
        except (StaleElementReferenceException, WebDriverException):
            pass
        if time.time() > deadline:
            raise Timeout(what)
        time.sleep(0.1)


def row(driver, body, key):
    for tr in driver.find_elements(By.CSS_SELECTOR, f"#{body} tr"):
        if tr.get_attribute("data-key") == key:
            return tr
    return None


def visible(driver, id_):
    return driver.find_element(By.ID, id_).is_displayed()


def notice_after(driver, before):
    return wait(driver, "a notice", lambda: (
        lambda t: t if t and t != before else None)(driver.find_element(By.ID, "notice").text))


def handle(driver, c):
    op = c["op"]
    if op == "open":
        driver.get(c["url"])
        view = wait(driver, "the login form or the console", lambda:
                    "login" if visible(driver, "login") else
                    "console" if visible(driver, "console") else None)
        return {"view": view}
    if op == "login":
        driver.find_element(By.ID, "login-name").clear()
        driver.find_element(By.ID, "login-name").send_keys(c["user"])
        driver.find_element(By.ID, "login-password").send_keys(c["password"])
        # The answer to this login, not the message of an earlier one.
        driver.execute_script('document.getElementById("login-error").textContent = ""')
        driver.find_element(By.ID, "login-submit").click()
        return wait(driver, "the login's answer", lambda:
                    {"ok": True, "who": driver.find_element(By.ID, "who").text}
                    if visible(driver, "console") else
                    {"ok": False, "message": driver.find_element(By.ID, "login-error").text}
                    if driver.find_element(By.ID, "login-error").text else None)
    if op == "wait_row":
        tr = wait(driver, f"row {c['key']} in {c['body']}", lambda: row(driver, c["body"], c["key"]))
        return {"cells": [td.text for td in tr.find_elements(By.TAG_NAME, "td")]}
    if op == "wait_no_row":
        wait(driver, f"row {c['key']} to leave {c['body']}",
             lambda: row(driver, c["body"], c["key"]) is None)
        return {}
    if op in ("wait_cell", "wait_change"):
        def cell():
            tr = row(driver, c["body"], c["key"])
            if tr is None:
                return None
            t = tr.find_element(By.CSS_SELECTOR, "td." + c["cls"]).text
            ok = c["text"] in t if op == "wait_cell" else t != c["text"]
            return t if ok else None
        return {"text": wait(driver, f"{op} {c}", cell)}
    if op == "click":
        before = driver.find_element(By.ID, "notice").text
        wait(driver, f"button {c['button']} in row {c['key']}", lambda:
             row(driver, c["body"], c["key"]).find_element(By.CSS_SELECTOR, "button." + c["button"]).click() or True)
        return {"notice": notice_after(driver, before)}
    if op == "add_user":
        before = driver.find_element(By.ID, "notice").text
        for id_, v in [("user-name", c["name"]), ("user-password", c["password"]), ("user-home", c["home"])]:
            e = driver.find_element(By.ID, id_)
            e.clear()
            e.send_keys(v)
        for p in ["sftp", "ftp"]:
            box = driver.find_element(By.ID, "user-" + p)
            if box.is_selected() != (p in c["protocols"]):
                box.click()
        driver.find_element(By.ID, "user-submit").click()
        return {"notice": notice_after(driver, before),
                "form_message": driver.find_element(By.ID, "user-error").text}
    if op == "edit_user":
        before = driver.find_element(By.ID, "notice").text
        wait(driver, f"button edit in row {c['name']}", lambda:
             row(driver, "users-body", c["name"]).find_element(By.CSS_SELECTOR, "button.edit").click() or True)
        wait(driver, "the form to change the user", lambda:
             driver.find_element(By.ID, "user-form-title").text == f"Change {c['name']}")
        e = driver.find_element(By.ID, "user-password")
        e.clear()
        e.send_keys(c["password"])
        driver.find_element(By.ID, "user-submit").click()
        return {"notice": notice_after(driver, before),
                "form_message": driver.find_element(By.ID, "user-error").text}
    if op == "buttons":
        shown = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "button")
                 if b.is_displayed()]
        return {"buttons": shown, "user_form": visible(driver, "user-form")}
    if op == "fetch":
        script = """
            const [method, path, csrf, done] = arguments;
            const headers = {};
            if (csrf) headers["X-CSRF-Token"] = state.csrf;
            fetch(path, {method, headers, credentials: "same-origin"})
              .then(async (r) => done({status: r.status, body: await r.text()}))
              .catch((e) => done({status: 0, body: String(e)}));
        """
        return driver.execute_async_script(script, c["method"], c["path"], c["csrf"])
    if op == "logout":
        driver.find_element(By.ID, "logout").click()
        wait(driver, "the login form", lambda: visible(driver, "login"))
        return {}
    if op == "logout_mid_refresh":
        # The held answer is let through once the logout's answer (which makes the browser
        # drop the cookie) has come and before the page has acted on it: the order a slow
        # sessions answer and a quick logout can take on a loaded machine.
        driver.execute_script("""
            window.__held = false;
            window.__release = null;
            const real = window.fetch;
            window.__realFetch = real;
            window.fetch = async (path, opts) => {
              const r = await real(path, opts);
              if (!window.__held && path === "/api/v1/sessions") {
                window.__held = true;
                await new Promise((go) => { window.__release = go; });
              } else if (path === "/api/v1/logout" && window.__release) {
                window.__release();
                await new Promise((go) => setTimeout(go, 500));
              }
              return r;
            };
        """)
        wait(driver, "a refresh to be under way", lambda:
             driver.execute_script("return !!window.__release"))
        driver.find_element(By.ID, "logout").click()
        wait(driver, "the login form", lambda: visible(driver, "login"))
        # Let whatever the held refresh went on to send reach the gateway.
        time.sleep(1.5)
        driver.execute_script("window.fetch = window.__realFetch;")
        return {"held": True}
    if op == "wait_login":
        wait(driver, "the login form", lambda: visible(driver, "login"))
        return {"message": driver.find_element(By.ID, "login-error").text}
    raise ValueError(f"unknown op {op}")


def main():
    driver = start()
    driver.set_script_timeout(TIMEOUT)
    try:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            c = json.loads(line)
            if c["op"] == "quit":
                break
            try:
                out = handle(driver, c)
            except Timeout as e:
                out = {"error": f"timed out waiting for {e}",
                       "page": driver.find_element(By.TAG_NAME, "body").text}
            print(json.dumps(out), flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Drives vaultd's console in headless Chromium (Debian's chromium and chromium-driver, PyPI selenium).

Run by Tests/EndToEndTests/ConsoleBrowserTests.swift against a real vaultd it set up. Everything secret comes in a
file (VAULT_CONSOLE_SETUP, JSON: the URL, each principal's token, the ids the scenarios act on), never as an argument.
Screenshots of every page go to VAULT_CONSOLE_OUTPUT, with the audit export the DPO downloads. Each scenario prints
"ok - NAME"; the first failure prints "not ok - NAME: WHY", saves the page, and exits 1.
"""
import base64
import hashlib
import json
import os
import ssl
import sys
import time
import traceback
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

SETUP = json.load(open(os.environ["VAULT_CONSOLE_SETUP"]))
OUT = os.environ["VAULT_CONSOLE_OUTPUT"]
BASE = SETUP["url"]
TOKENS = SETUP["tokens"]
FORCE = "wmp"


class Failure(Exception):
    pass


def replaced(element):
    """Waits for `element`'s document to be gone: Chromium says so as a stale element, or (when the node went with
    its document mid-call) as an inspector error that the node does not belong to the document."""
    def predicate(_driver):
        try:
            element.is_enabled()
            return False
        except WebDriverException:
            return True
    return predicate


def check(condition, why):
    if not condition:
        raise Failure(why)


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("VAULT_CHROMIUM", "/usr/bin/chromium")
    for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1360,1000", "--lang=en-GB"]:
        options.add_argument(argument)
    # vaultd's certificate is from the test's own CA, which this throwaway profile does not know.
    options.accept_insecure_certs = True
    options.add_experimental_option("prefs", {
        "download.default_directory": OUT, "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    service = Service(executable_path=os.environ.get("VAULT_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": OUT})
    return driver


class Person:
    """One browser (its own cookies) signed in as one principal."""

    def __init__(self, principal):
        self.principal = principal
        self.driver = browser()

    def go(self, path):
        self.driver.get(BASE + path)
        return self

    def click(self, element):
        """Clicks something that loads a page (a link, a form's button) and waits until the new page has loaded."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        element.click()
        WebDriverWait(self.driver, 30).until(replaced(old))
        WebDriverWait(self.driver, 30).until(
            lambda driver: driver.execute_script("return document.readyState") == "complete")
        return self

    def click_id(self, element_id):
        return self.click(self.driver.find_element(By.ID, element_id))

    def path(self):
        url = self.driver.current_url
        return url[len(BASE):] if url.startswith(BASE) else url

    def text(self, css):
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def exists(self, css):
        return len(self.driver.find_elements(By.CSS_SELECTOR, css)) > 0

    def shot(self, name):
        """The whole page as a PNG, not only the window."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        image = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1},
        })
        with open(os.path.join(OUT, name + ".png"), "wb") as file:
            file.write(base64.b64decode(image["data"]))

    def sign_in(self, screenshot=None):
        self.go("/ui/")
        check(self.path().startswith("/ui/sign-in"), f"/ui/ without a session went to {self.path()}, not the sign-in")
        if screenshot:
            self.shot(screenshot)
        self.driver.find_element(By.ID, "token").send_keys(TOKENS[self.principal])
        self.click_id("sign-in")
        check(self.path() == "/ui/", f"after signing in the browser is at {self.path()}")
        check(self.text("#who") == self.principal, f"the page names {self.text('#who')}, not {self.principal}")
        cookies = {c["name"]: c for c in self.driver.get_cookies()}
        session = cookies.get("__Host-vault_session")
        check(session is not None, "no session cookie after sign-in")
        check(session["secure"] and session["httpOnly"] and session.get("sameSite") == "Strict",
              f"the session cookie is not Secure, HttpOnly and SameSite=Strict: {session}")
        check(TOKENS[self.principal] not in json.dumps(self.driver.get_cookies()), "the token is in a cookie")
        return self

    def error(self):
        """The error page's code and message, or None when the page is not an error."""
        if not self.exists("#error"):
            return None
        return self.text("#error-code"), self.text("#error-message")

    def post(self, path, fields):
        """A form this person's browser posts that no page of the console offers (a forged or tampered post)."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.execute_script("""
            const form = document.createElement('form');
            form.method = 'post'; form.action = arguments[0];
            for (const [name, value] of Object.entries(arguments[1])) {
                const input = document.createElement('input');
                input.type = 'hidden'; input.name = name; input.value = value; form.appendChild(input);
            }
            document.body.appendChild(form); form.submit();
        """, path, fields)
        WebDriverWait(self.driver, 30).until(replaced(old))
        WebDriverWait(self.driver, 30).until(
            lambda driver: driver.execute_script("return document.readyState") == "complete")
        return self

    def csrf(self):
        return self.driver.find_element(By.CSS_SELECTOR, "form.sign-out input[name=csrf]").get_attribute("value")

    def sign_out(self):
        self.click_id("sign-out")
        check(self.path().startswith("/ui/sign-in"), f"sign-out went to {self.path()}")
        check("signed out" in self.text("#notice"), "no notice that the person is signed out")

    def close(self):
        self.driver.quit()


def api(method, path, token):
    """The API, as the test's own client (not the browser): a token revocation."""
    context = ssl.create_default_context(cafile=SETUP["ca"])
    request = urllib.request.Request(BASE + path, method=method, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(request, context=context) as response:
        return response.status, json.loads(response.read() or b"null")


def retrieval_row(person):
    rows = person.driver.find_elements(By.CSS_SELECTOR, f"tr[data-retrieval='{SETUP['retrieval']}']")
    check(len(rows) == 1, f"the retrievals page lists retrieval {SETUP['retrieval']} {len(rows)} times")
    return rows[0]


RESULTS = []
PEOPLE = []


def scenario(name):
    def wrap(function):
        RESULTS.append((name, function))
        return function
    return wrap


@scenario("a custodian signs in and approves a retrieval; a second custodian's approval grants it")
def custodians_grant():
    first = Person("custodian-wmp")
    PEOPLE.append(first)
    first.sign_in(screenshot="01-sign-in")
    first.shot("02-home")
    first.go(f"/ui/forces/{FORCE}")
    check(first.exists("#datasets") and first.exists("#archives"), "the overview has no datasets or archives table")
    check(SETUP["archive"] in first.text("#archives"), "the archive to retrieve is not in the overview")
    check(SETUP["held"] in first.text("#archives") and "held" in first.text("#archives"),
          "the held archive is not shown as held")
    first.shot("03-overview")
    # A legal hold on the archive, an early shred the hold refuses (the API's message on the page), the hold lifted.
    archive = f"tr[data-extract='{SETUP['archive']}']"
    first.driver.find_element(By.CSS_SELECTOR, f"{archive} details summary").click()
    first.driver.find_element(By.CSS_SELECTOR, f"{archive} form.hold input[name=reason]").send_keys("Op Lantern review")
    first.click(first.driver.find_element(By.CSS_SELECTOR, f"{archive} .hold-button"))
    check("legal hold" in first.text("#notice"), f"placing the hold said {first.text('#notice')}")
    check("held: Op Lantern review" in first.text(archive), f"the archive row reads {first.text(archive)}")
    first.driver.find_element(By.CSS_SELECTOR, f"{archive} details summary").click()
    first.driver.find_element(By.CSS_SELECTOR, f"{archive} form.shred input[name=reason]").send_keys("no longer needed")
    first.driver.find_element(By.CSS_SELECTOR, f"{archive} form.shred input[name=confirm]").click()
    first.click(first.driver.find_element(By.CSS_SELECTOR, f"{archive} .shred-button"))
    error = first.error()
    check(error is not None and "hold" in error[1], f"shredding a held archive: {error}")
    first.go(f"/ui/forces/{FORCE}")
    first.driver.find_element(By.CSS_SELECTOR, f"{archive} details summary").click()
    first.driver.find_element(By.CSS_SELECTOR, f"{archive} form.release input[name=reason]").send_keys("review done")
    first.click(first.driver.find_element(By.CSS_SELECTOR, f"{archive} .release-button"))
    check("lifted" in first.text("#notice") and "kept until" in first.text(archive),
          f"lifting the hold: {first.text('#notice')} / {first.text(archive)}")
    first.go(f"/ui/forces/{FORCE}/retrievals")
    row = retrieval_row(first)
    check("pending" in row.text, f"the new retrieval is not pending: {row.text}")
    first.click(row.find_element(By.CSS_SELECTOR, "button.approve-button"))
    check("second custodian" in first.text("#notice"), f"after one approval: {first.text('#notice')}")
    row = retrieval_row(first)
    check("pending" in row.text and "custodian-wmp" in row.text, f"after one approval the row reads {row.text}")
    check(not row.find_elements(By.CSS_SELECTOR, "button.approve-button"),
          "the custodian who approved is offered to approve again")
    first.sign_out()
    first.go(f"/ui/forces/{FORCE}/retrievals")
    check(first.path().startswith("/ui/sign-in"), "after sign-out the retrievals page still opens")

    second = Person("custodian-2")
    PEOPLE.append(second)
    second.sign_in()
    second.go(f"/ui/forces/{FORCE}/retrievals")
    second.click(retrieval_row(second).find_element(By.CSS_SELECTOR, "button.approve-button"))
    notice = second.text("#notice")
    check("granted" in notice and "analyst-1" in notice, f"the second approval did not grant: {notice}")
    row = retrieval_row(second)
    check("granted" in row.text, f"after two approvals the row reads {row.text}")
    second.shot("04-retrievals")


@scenario("a custodian authors a use case, rotates the master key and sees the rewrap progress")
def custodian_keys_and_use_cases():
    person = PEOPLE[1]
    person.go(f"/ui/forces/{FORCE}/use-cases")
    person.click_id("new-use-case")
    person.driver.find_element(By.ID, "id").send_keys("burglary-review")
    person.driver.find_element(By.ID, "description").send_keys("Burglary hot-spot review")
    # An error a person can cause: no lawful basis. The form comes back with the API's message.
    person.driver.find_element(By.ID, "lawful_basis").clear()
    person.driver.execute_script("document.getElementById('lawful_basis').removeAttribute('required')")
    person.driver.find_element(By.CSS_SELECTOR, "input[name=datasets][value=crime]").click()
    person.driver.find_element(By.ID, "principals").send_keys("analyst-1")
    person.click_id("save-use-case")
    check(person.exists("#form-error") and "lawful basis" in person.text("#form-error"),
          "a use case without a lawful basis did not come back with the reason")
    person.driver.find_element(By.ID, "lawful_basis").send_keys("Crime and Disorder Act 1998 s.115")
    person.click_id("save-use-case")
    check("burglary-review is saved" in person.text("#notice"), f"saving the use case said {person.text('#notice')}")
    check(person.exists("tr[data-use-case='burglary-review']"), "the new use case is not listed")
    person.shot("05-use-cases")
    # "New" never replaces a use case that exists; "Edit" does, keeping its id.
    person.click_id("new-use-case")
    person.driver.find_element(By.ID, "id").send_keys("crime-review")
    person.driver.find_element(By.ID, "lawful_basis").send_keys("Crime and Disorder Act 1998 s.115")
    person.click_id("save-use-case")
    check(person.exists("#form-error") and "already" in person.text("#form-error"),
          "a new use case with an existing id was not refused")
    person.go(f"/ui/forces/{FORCE}/use-cases/burglary-review/edit")
    description = person.driver.find_element(By.ID, "description")
    description.clear()
    description.send_keys("Burglary hot-spot review, phase 2")
    person.click_id("save-use-case")
    check("burglary-review is saved" in person.text("#notice")
          and "phase 2" in person.text("tr[data-use-case='burglary-review']"), "editing the use case did not save it")
    person.go(f"/ui/forces/{FORCE}/keys")
    before = person.text("#active-key")
    # The server insists on the confirmation, whatever the browser does with `required`.
    person.post(f"/ui/forces/{FORCE}/keys/rotate", {"csrf": person.csrf()})
    check(person.error() is not None and "confirmation" in person.error()[1],
          f"a rotation without the confirmation was not refused: {person.error()}")
    person.go(f"/ui/forces/{FORCE}/keys")
    person.driver.find_element(By.ID, "rotate-confirm").click()
    person.click_id("rotate-button")
    check("Rotation to" in person.text("#notice"), f"rotating said {person.text('#notice')}")
    check(person.text("#active-key") != before, "the active key did not change")
    check(person.exists("#rewrap-progress"), "no rewrap progress bar")
    person.shot("06-keys")
    # Without navigating: console.js polls the progress and reloads the page when the rewrap job has finished.
    state, deadline = "", time.time() + 60
    while time.time() < deadline and state != "idle":
        time.sleep(0.5)
        try:
            state = person.text("#rewrap-state")
        except Exception:  # noqa: BLE001 - the page is being reloaded
            state = ""
    check(state == "idle", f"the keys page still says the rewrap is {state!r} a minute after the rotation")
    check(person.text("#rewrap-percent") == "100%", f"the finished rewrap shows {person.text('#rewrap-percent')}")
    # The bar's numbers come from the console's own progress endpoint while a rotation runs.
    person.go(f"/ui/forces/{FORCE}/keys/progress")
    progress = json.loads(person.driver.find_element(By.TAG_NAME, "body").text)
    check({"value", "max", "percent", "running"} <= set(progress), f"the progress endpoint answered {progress}")


@scenario("custodians see destruction certificates with their verdict, and download one")
def certificates():
    person = PEOPLE[1]
    person.go(f"/ui/forces/{FORCE}/certificates")
    rows = person.driver.find_elements(By.CSS_SELECTOR, "tr[data-certificate]")
    check(len(rows) >= 1, "no certificate is listed")
    check(any(v in rows[0].text for v in ("complete", "pending")), f"no verdict in {rows[0].text}")
    person.shot("07-certificates")
    person.click(rows[0].find_element(By.CSS_SELECTOR, "a"))
    check(person.exists("#verdict") and person.exists("#lineage"), "the certificate page has no verdict or lineage")
    person.shot("08-certificate")


@scenario("an analyst cannot reach the custodian pages or another force, by link or by forged post")
def analyst_refused():
    analyst = Person("analyst-1")
    PEOPLE.append(analyst)
    analyst.sign_in()
    check(not analyst.exists("a[href$='/keys']"), "the analyst is offered the keys page")
    for path, code in [(f"/ui/forces/{FORCE}/keys", "role_required"), ("/ui/forces/gmp", "other_force"),
                       ("/ui/ops", "role_required"), (f"/ui/forces/{FORCE}/audit", "role_required")]:
        analyst.go(path)
        error = analyst.error()
        check(error is not None and error[0] == code, f"{path} for the analyst: {error} (expected {code})")
        check(analyst.text("#error h1") == "403 Forbidden", f"the error page's heading is {analyst.text('#error h1')}")
    analyst.shot("09-refused")
    token = analyst.csrf()
    for path in [f"/ui/forces/{FORCE}/retrievals/{SETUP['retrieval']}/approve", f"/ui/forces/{FORCE}/keys/rotate",
                 f"/ui/forces/gmp/use-cases/gmp-case/revoke"]:
        analyst.go("/ui/")
        analyst.post(path, {"csrf": token, "confirm": "yes"})
        error = analyst.error()
        check(error is not None and error[0] in ("role_required", "other_force"),
              f"a forged post to {path} was not refused: {error}")
    analyst.go("/ui/no-such-page")
    check(analyst.error() is not None and analyst.error()[0] == "not_found", "an unknown page is not a 404 page")


@scenario("a post without the session's CSRF token is refused and changes nothing")
def csrf_refused():
    person = PEOPLE[1]
    person.go(f"/ui/forces/{FORCE}/keys")
    before = person.text("#active-key")
    person.post(f"/ui/forces/{FORCE}/keys/rotate", {"confirm": "yes"})
    check(person.error() is not None and person.error()[0] == "csrf_token_invalid",
          f"a post without a CSRF token: {person.error()}")
    person.go(f"/ui/forces/{FORCE}/keys")
    person.post(f"/ui/forces/{FORCE}/keys/rotate", {"confirm": "yes", "csrf": "0" * 64})
    check(person.error() is not None and person.error()[0] == "csrf_token_invalid",
          f"a post with another token: {person.error()}")
    person.go(f"/ui/forces/{FORCE}/keys")
    check(person.text("#active-key") == before, "a refused post rotated the key")


@scenario("a DPO searches the audit trail and downloads an export")
def dpo_audit():
    dpo = Person("dpo-wmp")
    PEOPLE.append(dpo)
    dpo.sign_in()
    dpo.go(f"/ui/forces/{FORCE}/audit")
    check("Verified" in dpo.text("#chain-status"), f"the chain status reads {dpo.text('#chain-status')}")
    dpo.driver.find_element(By.ID, "filter-action").send_keys("archive.approve")
    dpo.click_id("search-audit")
    results = dpo.text("#audit-results")
    check("custodian-wmp" in results and "custodian-2" in results,
          f"the search for archive.approve does not show both custodians: {results}")
    dpo.shot("10-audit")
    dpo.go(f"/ui/forces/{FORCE}/audit?search=1&outcome=denied")
    check("analyst-1" in dpo.text("#audit-results"), "the analyst's refusals are not in the force's trail")
    dpo.go(f"/ui/forces/{FORCE}/audit?search=1&from=yesterday")
    check(dpo.error() is not None and "RFC 3339" in dpo.error()[1], f"a bad time: {dpo.error()}")
    dpo.go(f"/ui/forces/{FORCE}/audit")
    before = set(os.listdir(OUT))
    dpo.driver.find_element(By.ID, "export-audit").click()
    deadline = time.time() + 30
    export = None
    while time.time() < deadline and export is None:
        new = [n for n in set(os.listdir(OUT)) - before if n.endswith(".ndjson")]
        export = new[0] if new else None
        time.sleep(0.2)
    check(export is not None, "the export did not download")
    os.replace(os.path.join(OUT, export), os.path.join(OUT, "audit-export.ndjson"))


@scenario("operations: expiring archives, the sweep's dry run and the activity charts")
def operations():
    ops = Person("ops-1")
    PEOPLE.append(ops)
    ops.sign_in()
    ops.go("/ui/ops")
    check(ops.exists(f"#ops-{FORCE}"), "no section for force wmp")
    charts = ops.driver.find_elements(By.CSS_SELECTOR, f"#ops-{FORCE} svg.chart")
    check(len(charts) == 4, f"{len(charts)} charts instead of 4")
    check("would be shredded" in ops.text(f"#ops-{FORCE} .sweep"), "no dry run of the sweep")
    ops.shot("11-ops")


@scenario("revoking the token a session was opened with ends the session")
def revocation_ends_session():
    person = PEOPLE[1]
    person.go(f"/ui/forces/{FORCE}/keys")
    check(person.exists("#master-keys"), "the custodian's session had already ended")
    token = TOKENS["custodian-2"]
    token_id = hashlib.sha256(token.encode()).hexdigest()[:12]
    status, _ = api("DELETE", f"/v1/tokens/{token_id}", token)
    check(status == 200, f"revoking the token answered {status}")
    person.go(f"/ui/forces/{FORCE}/keys")
    check(person.path().startswith("/ui/sign-in"), f"after revocation the page went to {person.path()}")
    check("ended" in person.text("#notice"), "no notice that the session ended")
    person.driver.find_element(By.ID, "token").send_keys(token)
    person.click_id("sign-in")
    check(person.exists("#sign-in-error"), "a revoked token signed in")


def main():
    os.makedirs(OUT, exist_ok=True)
    status = 0
    try:
        for name, function in RESULTS:
            try:
                function()
                print(f"ok - {name}", flush=True)
            except Exception as error:  # noqa: BLE001 - every failure is reported the same way
                print(f"not ok - {name}: {error}", flush=True)
                if not isinstance(error, Failure):
                    traceback.print_exc()
                for index, person in enumerate(PEOPLE):
                    try:
                        person.shot(f"failure-{index}-{person.principal}")
                        with open(os.path.join(OUT, f"failure-{index}-{person.principal}.html"), "w") as page:
                            page.write(person.driver.page_source)
                        print(f"  {person.principal} was at {person.path()}", flush=True)
                        names = [cookie["name"] for cookie in person.driver.get_cookies()]
                        print(f"  {person.principal}'s cookies: {names}", flush=True)
                    except Exception:  # noqa: BLE001
                        pass
                status = 1
                break
    finally:
        for person in PEOPLE:
            person.close()
    sys.exit(status)


if __name__ == "__main__":
    main()

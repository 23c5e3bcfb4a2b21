"""The web UI in a real (headless) Chromium against the real platform: sign up, chat, come back."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.api import new_email
from tests.support.platform import Platform

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which("chromium"), (
        "Chromium is not installed: run `make helm-tools` (deploy/scripts/install_tools.sh)"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


def sign_up(page: Page, platform: Platform) -> str:
    address = new_email()
    page.goto(platform.gateway_url + "/")
    page.fill("#email", address)
    page.fill("#password", "a long enough password")
    page.click("#register")
    expect(page.locator("#app")).to_be_visible()
    return address


def test_sign_up_chat_and_come_back(page: Page, platform: Platform) -> None:
    sign_up(page, platform)
    expect(page.locator("#model option")).not_to_have_count(0)

    page.fill("#input", "hello from the browser")
    page.click("#send")
    messages = page.locator("#messages li")
    expect(messages).to_have_count(2)
    expect(messages.nth(0)).to_have_text("hello from the browser")
    # The offline/fake model echoes the words back, streamed into the second bubble.
    expect(messages.nth(1)).to_contain_text("hello from the browser")
    expect(page.locator("#conversations li")).to_have_count(1)

    page.reload()
    expect(page.locator("#app")).to_be_visible()  # still signed in (token kept for the tab)
    page.locator("#conversations li").first.click()
    expect(page.locator("#messages li")).to_have_count(2)
    expect(page.locator("#chat-error")).to_have_text("")


def test_replies_are_text_never_markup(page: Page, platform: Platform) -> None:
    sign_up(page, platform)
    payload = '<img src=x onerror="window.pwned=1">'
    page.fill("#input", payload)
    page.click("#send")
    expect(page.locator("#messages li").nth(1)).to_contain_text("<img")
    assert page.locator("#messages img").count() == 0
    assert page.evaluate("window.pwned === undefined")


def test_wrong_password_shows_the_error(page: Page, platform: Platform) -> None:
    page.goto(platform.gateway_url + "/")
    page.fill("#email", new_email())
    page.fill("#password", "not the password")
    page.click("#login")
    expect(page.locator("#signin-error")).not_to_have_text("")
    expect(page.locator("#app")).to_be_hidden()


def test_documents_upload_answer_with_sources_and_delete(page: Page, platform: Platform) -> None:
    sign_up(page, platform)
    page.set_input_files(
        "#document-file",
        files=[
            {
                "name": "trams.txt",
                "mimeType": "text/plain",
                "buffer": b"Tram 28 climbs through Alfama and passes close to the castle of Lisbon.",
            }
        ],
    )
    documents = page.locator("#documents li")
    expect(documents).to_have_count(1)
    expect(documents.first).to_contain_text("trams.txt")

    page.check("#use-documents")
    page.fill("#input", "Which tram goes to the castle in Lisbon?")
    page.click("#send")
    # The reply is followed by the excerpts it was given, named by document title.
    expect(page.locator("#messages li.sources")).to_have_text("Sources: trams.txt (part 1)")
    page.reload()  # the reply keeps its sources: they are shown again with the history
    page.locator("#conversations li").first.click()
    expect(page.locator("#messages li.sources")).to_have_text("Sources: trams.txt (part 1)")

    page.click("#documents li button")
    expect(documents).to_have_count(0)
    expect(page.locator("#documents-error")).to_have_text("")


def test_deleting_the_account_asks_for_the_password_and_signs_out(page: Page, platform: Platform) -> None:
    address = sign_up(page, platform)
    page.once("dialog", lambda dialog: dialog.accept("not the password"))
    page.click("#delete-account")
    expect(page.locator("#account-error")).not_to_have_text("")  # refused: still signed in
    expect(page.locator("#app")).to_be_visible()

    page.once("dialog", lambda dialog: dialog.accept("a long enough password"))
    page.click("#delete-account")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('parley.token')") is None
    login = httpx.post(
        platform.gateway_url + "/v1/auth/login", json={"email": address, "password": "a long enough password"}
    )
    assert login.status_code == 401  # the account is gone

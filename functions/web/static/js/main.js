// The page: the login view or the converter, and moving between them.

import * as session from "./session.js";
import * as auth from "./auth.js";
import * as uploads from "./upload.js";
import { JobList } from "./jobs.js";

const $ = (id) => document.getElementById(id);

const views = { auth: $("auth-view"), app: $("app-view"), account: $("account") };
const notice = $("notice");

function say(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

const jobs = new JobList(
  {
    list: $("jobs"),
    empty: $("jobs-empty"),
    more: $("more"),
    error: $("jobs-error"),
    heading: $("jobs-title"),
  },
  { token: session.token, onExpired: expired, say },
);

const upload = uploads.setUp(
  {
    form: $("upload-form"),
    file: $("file"),
    label: document.querySelector("label[for=file]"),
    dropZone: $("drop-zone"),
    submit: $("upload-button"),
    status: $("upload-status"),
    statusLabel: $("upload-label"),
    bar: $("upload-progress"),
    text: $("upload-text"),
    cancel: $("cancel-upload"),
    error: $("upload-error"),
  },
  {
    token: session.token,
    onUploaded: () => jobs.refresh(),
    onExpired: expired,
  },
);

function showLogin(message) {
  session.end();
  jobs.stop();
  upload.reset();
  views.app.hidden = true;
  views.account.hidden = true;
  views.auth.hidden = false;
  say(message);
  $("email").focus();
}

function showApp() {
  $("whoami").textContent = session.email();
  views.auth.hidden = true;
  views.app.hidden = false;
  views.account.hidden = false;
  jobs.start();
}

function expired() {
  showLogin("Your session has expired. Log in again to go on.");
}

auth.setUp(
  {
    form: $("auth-form"),
    email: $("email"),
    password: $("password"),
    signupButton: $("signup"),
    error: $("auth-error"),
  },
  (token, email) => {
    session.start(token, email);
    say("");
    showApp();
  },
);

$("logout").addEventListener("click", () => showLogin("You are logged out."));

if (session.token()) {
  showApp();
} else {
  showLogin("");
}

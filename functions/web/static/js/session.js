// The login token lives in this tab's sessionStorage only: it goes when the
// tab closes, and it is never put in a URL, a cookie or storage that lasts.

const TOKEN = "spindle.token";
const EMAIL = "spindle.email";

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function email() {
  return sessionStorage.getItem(EMAIL) || "";
}

export function start(newToken, newEmail) {
  sessionStorage.setItem(TOKEN, newToken);
  sessionStorage.setItem(EMAIL, newEmail);
}

export function end() {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(EMAIL);
}

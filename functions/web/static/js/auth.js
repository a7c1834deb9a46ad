// The login and sign-up form.

import { ApiError, explain } from "./errors.js";
import { request } from "./api.js";

/** Base64 of the UTF-8 bytes of `text` (btoa alone takes Latin-1 only). */
function base64(text) {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary);
}

/** POST /login with Basic credentials; resolves to the token. */
async function login(email, password) {
  const response = await request("/login", {
    method: "POST",
    headers: { Authorization: `Basic ${base64(`${email}:${password}`)}` },
  });
  return (await response.text()).trim();
}

async function signup(email, password) {
  await request("/signup", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
}

/** What to say when logging in or signing up failed. */
function explainAuth(err, signingUp) {
  if (err instanceof ApiError) {
    if (err.status === 401 && !signingUp) {
      return "Wrong email or password. Check both, or sign up if you have no account yet.";
    }
    if (err.status === 409) {
      return "An account with this email exists already: log in instead.";
    }
    if (err.status === 403 && signingUp) {
      return "Signing up is closed on this server. Ask whoever runs it for an account.";
    }
  }
  return explain(err);
}

/**
 * Wires the form: on success `onLoggedIn(token, email)`.
 */
export function setUp({ form, email, password, signupButton, error }, onLoggedIn) {
  const busy = (on) => {
    for (const control of form.querySelectorAll("button, input")) {
      control.disabled = on;
    }
  };
  const attempt = async (signingUp) => {
    error.hidden = true;
    const address = email.value.trim();
    if (!address || !password.value) {
      error.textContent = "Enter your email and password.";
      error.hidden = false;
      (address ? password : email).focus();
      return;
    }
    busy(true);
    try {
      if (signingUp) {
        await signup(address, password.value);
      }
      const token = await login(address, password.value);
      password.value = "";
      onLoggedIn(token, address);
    } catch (err) {
      error.textContent = explainAuth(err, signingUp);
      error.hidden = false;
    } finally {
      busy(false);
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(false);
  });
  signupButton.addEventListener("click", () => attempt(true));
}

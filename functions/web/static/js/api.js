// Calls to the API, on this page's own origin. The token goes in the
// Authorization header, never in a URL.

import { ApiError, Cancelled, unreachable } from "./errors.js";

/** A request; resolves to the response when it is ok, else throws ApiError. */
export async function request(path, { method = "GET", token = null, headers = {}, body } = {}) {
  const sent = new Headers(headers);
  if (token) {
    sent.set("Authorization", `Bearer ${token}`);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body, cache: "no-store" });
  } catch {
    throw unreachable();
  }
  if (!response.ok) {
    throw await ApiError.from(response);
  }
  return response;
}

/** A request whose answer is JSON. */
export async function json(path, options) {
  const response = await request(path, options);
  return response.json();
}

/**
 * Uploads `file` as the one part of a multipart form, reporting
 * `onProgress(sentBytes, totalBytes)` as the browser sends it. Returns
 * `{ done, cancel }`: `done` resolves to the 202 answer, or rejects with an
 * ApiError, or with Cancelled after `cancel()`.
 */
export function upload(file, token, onProgress) {
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    xhr.upload.addEventListener("progress", (event) => {
      onProgress(event.loaded, event.lengthComputable ? event.total : file.size);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 202) {
        try {
          resolve(JSON.parse(xhr.responseText));
        } catch {
          reject(new ApiError(xhr.status, "the server's answer could not be read"));
        }
      } else {
        reject(ApiError.fromText(xhr.status, xhr.responseText, xhr.getResponseHeader("Retry-After")));
      }
    });
    xhr.addEventListener("error", () => reject(unreachable()));
    xhr.addEventListener("abort", () => reject(new Cancelled("upload cancelled")));
  });
  const form = new FormData();
  form.append("file", file, file.name);
  xhr.open("POST", "/upload");
  xhr.setRequestHeader("Authorization", `Bearer ${token}`);
  xhr.send(form);
  return { done, cancel: () => xhr.abort() };
}

// API errors and what to tell a person about them. Every error the API
// gives is JSON {"error": "..."}; the page adds what to do next.

export class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }

  /** From a fetch response that is not ok. */
  static async from(response) {
    const text = await response.text().catch(() => "");
    return ApiError.fromText(response.status, text, response.headers.get("Retry-After"));
  }

  static fromText(status, text, retryAfter) {
    let message = "";
    try {
      message = JSON.parse(text).error || "";
    } catch {
      // Not JSON: a proxy's page, say. The status speaks instead.
    }
    return new ApiError(status, message || `the server answered ${status}`, retryAfter);
  }
}

/** A request that never got an answer. */
export function unreachable() {
  return new ApiError(0, "the server could not be reached");
}

/** An upload the person cancelled. */
export class Cancelled extends Error {}

/** The server's message without its final full stop, to go in a sentence. */
function said(err) {
  return err.message.replace(/[.\s]+$/, "");
}

/** What happened and what to do, in words. */
export function explain(err) {
  if (!(err instanceof ApiError)) {
    return `Something went wrong in the page: ${err.message}. Reload the page and try again.`;
  }
  const wait = err.retryAfter ? `in ${err.retryAfter} seconds` : "in a little while";
  switch (err.status) {
    case 0:
      return "Could not reach the server. Check your connection and try again.";
    case 400:
      return `The server could not accept this: ${said(err)}.`;
    case 401:
      return "Your session has expired. Log in again.";
    case 403:
      return `Not allowed: ${said(err)}.`;
    case 404:
      return `Not found: ${said(err)}. It may have been deleted already.`;
    case 408:
      return `The connection was too slow: ${said(err)}. Try again on a faster connection.`;
    case 413:
      // The quota's message says to delete files already; the size limit's does not.
      return /delete/i.test(err.message)
        ? `Too large: ${said(err)}. Your files are listed below.`
        : `Too large: ${said(err)}. Choose a smaller file.`;
    case 429:
      return `Too many at once: ${said(err)}. Try again ${wait}.`;
    case 503:
      return `The server is busy: ${said(err)}. Try again ${wait}.`;
    case 507:
      return `The server's storage is full: ${said(err)}. Nothing was stored; try again later.`;
    default:
      return `Something went wrong (${err.status}): ${said(err)}. Try again; if it keeps happening, tell whoever runs this server.`;
  }
}

// The list of the person's jobs: newest first, updated live while any is
// queued or converting, with download and delete. File names and error
// texts are set as text, never parsed as HTML.

import { ApiError, explain } from "./errors.js";
import { json, request } from "./api.js";
import { bytes, duration, when } from "./format.js";

const PAGE = 20;
/** How often the list is read again while a job is queued or converting. */
const BUSY_POLL_MS = 1500;
/** ... and otherwise (another tab may upload; a session may expire). */
const IDLE_POLL_MS = 15000;

const STATUS_TEXT = {
  queued: "Waiting to be converted",
  processing: "Converting",
  done: "Done",
  failed: "Failed",
};

/** The MP3's name for a video called `filename`. */
function mp3Name(filename) {
  const dot = filename.lastIndexOf(".");
  return `${dot > 0 ? filename.slice(0, dot) : filename}.mp3`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** Sets `node`'s text only when it changes, so live regions speak only then. */
function setText(node, text) {
  if (node.textContent !== text) {
    node.textContent = text;
  }
}

/** One job's list item; `update` refreshes it in place. */
class JobItem {
  constructor(job, actions) {
    this.job = job;
    this.li = element("li", "job");
    this.li.dataset.jobId = job.job_id;
    this.name = element("div", "job-name", job.filename);
    this.meta = element("div", "job-meta");
    this.status = element("div", "job-status");
    this.status.setAttribute("aria-live", "polite");
    this.bar = element("progress");
    this.bar.max = 100;
    this.bar.setAttribute("aria-label", `Conversion of ${job.filename}`);
    this.error = element("div", "job-error");
    this.buttons = element("div", "job-actions");
    this.download = element("button", "download", "Download MP3");
    this.download.type = "button";
    this.download.setAttribute("aria-label", `Download the MP3 of ${job.filename}`);
    this.download.addEventListener("click", () => actions.download(this));
    this.remove = element("button", "danger delete", "Delete");
    this.remove.type = "button";
    this.remove.setAttribute("aria-label", `Delete ${job.filename}`);
    this.remove.addEventListener("click", () => this.askToDelete());
    this.confirm = element("button", "danger confirm-delete", "Yes, delete");
    this.confirm.type = "button";
    this.confirm.setAttribute("aria-label", `Yes, delete ${job.filename} and its MP3`);
    this.confirm.addEventListener("click", () => actions.delete(this));
    this.keep = element("button", "secondary keep", "Keep");
    this.keep.type = "button";
    this.keep.addEventListener("click", () => this.cancelDelete());
    this.buttons.append(this.download, this.remove, this.confirm, this.keep);
    this.li.append(this.name, this.meta, this.status, this.bar, this.error, this.buttons);
    this.cancelDelete();
    this.update(job);
  }

  askToDelete() {
    this.remove.hidden = true;
    this.confirm.hidden = false;
    this.keep.hidden = false;
    this.confirm.focus();
  }

  cancelDelete() {
    const asked = !this.confirm.hidden;
    this.remove.hidden = false;
    this.confirm.hidden = true;
    this.keep.hidden = true;
    if (asked) {
      this.remove.focus();
    }
  }

  update(job) {
    this.job = job;
    const meta = [bytes(job.size_bytes), `uploaded ${when(job.uploaded_at)}`];
    if (job.duration_secs !== undefined) {
      meta.push(`${duration(job.duration_secs)} long`);
    }
    setText(this.meta, meta.join(" · "));
    const label = STATUS_TEXT[job.status] || job.status;
    const converting = job.status === "processing";
    setText(this.status, converting ? `${label}: ${job.progress}%` : label);
    this.status.className = `job-status ${job.status}`;
    this.bar.hidden = !converting;
    this.bar.value = job.progress;
    setText(this.error, job.error ? `Why: ${job.error}` : "");
    this.error.hidden = !job.error;
    this.download.hidden = !(job.status === "done" && job.mp3_fid);
  }
}

/**
 * The list. `token()` gives the current token; on a 401 `onExpired()`;
 * `say(text)` tells the person something that happened.
 */
export class JobList {
  constructor(el, { token, onExpired, say }) {
    this.el = el;
    this.token = token;
    this.onExpired = onExpired;
    this.say = say;
    this.items = new Map();
    this.order = [];
    this.next = null;
    this.timer = null;
    this.running = false;
    el.more.addEventListener("click", () => this.loadOlder());
  }

  start() {
    this.running = true;
    this.refresh();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    this.items.clear();
    this.order = [];
    this.next = null;
    this.el.list.replaceChildren();
  }

  /** Reads again as many jobs as are shown (at least a page). */
  async refresh() {
    clearTimeout(this.timer);
    const want = Math.max(PAGE, this.order.length);
    try {
      let jobs = [];
      let next = null;
      do {
        const limit = Math.min(100, want - jobs.length);
        const after = next ? `&after=${encodeURIComponent(next)}` : "";
        const page = await json(`/jobs?limit=${limit}${after}`, { token: this.token() });
        jobs = jobs.concat(page.jobs);
        next = page.next;
      } while (next && jobs.length < want);
      if (!this.running) {
        return;
      }
      this.next = next;
      this.render(jobs);
      this.showError("");
    } catch (err) {
      if (!this.failed(err)) {
        return;
      }
    }
    this.schedule();
  }

  async loadOlder() {
    if (!this.next) {
      return;
    }
    try {
      const page = await json(`/jobs?limit=${PAGE}&after=${encodeURIComponent(this.next)}`, {
        token: this.token(),
      });
      this.next = page.next;
      this.render(this.order.map((id) => this.items.get(id).job).concat(page.jobs));
    } catch (err) {
      this.failed(err);
    }
  }

  schedule() {
    if (!this.running) {
      return;
    }
    const busy = this.order.some((id) => {
      const status = this.items.get(id).job.status;
      return status === "queued" || status === "processing";
    });
    this.timer = setTimeout(() => this.refresh(), busy ? BUSY_POLL_MS : IDLE_POLL_MS);
  }

  /** Shows `jobs` in order, reusing the items already shown. */
  render(jobs) {
    const seen = new Set();
    jobs.forEach((job, index) => {
      seen.add(job.job_id);
      let item = this.items.get(job.job_id);
      if (item) {
        item.update(job);
      } else {
        item = new JobItem(job, {
          download: (it) => this.download(it),
          delete: (it) => this.delete(it),
        });
        this.items.set(job.job_id, item);
      }
      // Moved only when out of place, so focus stays where it is.
      const at = this.el.list.children[index];
      if (at !== item.li) {
        this.el.list.insertBefore(item.li, at || null);
      }
    });
    for (const [id, item] of this.items) {
      if (!seen.has(id)) {
        item.li.remove();
        this.items.delete(id);
      }
    }
    this.order = jobs.map((job) => job.job_id);
    this.el.empty.hidden = jobs.length > 0;
    this.el.more.hidden = !this.next;
  }

  /** Fetches the MP3 with the token and saves it through a blob: URL. */
  async download(item) {
    const { job } = item;
    item.download.disabled = true;
    try {
      const response = await request(`/download?fid=${encodeURIComponent(job.mp3_fid)}`, {
        token: this.token(),
      });
      const url = URL.createObjectURL(await response.blob());
      const link = element("a");
      link.href = url;
      link.download = mp3Name(job.filename);
      document.body.append(link);
      link.click();
      link.remove();
      // Long enough for the browser to start saving it.
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      this.say(`Saving ${link.download}.`);
    } catch (err) {
      this.failed(err);
    } finally {
      item.download.disabled = false;
    }
  }

  async delete(item) {
    const { job } = item;
    try {
      await request(`/jobs/${encodeURIComponent(job.job_id)}`, {
        method: "DELETE",
        token: this.token(),
      });
      this.say(`Deleted ${job.filename} and its MP3.`);
    } catch (err) {
      // Already gone is what was asked for.
      if (!(err instanceof ApiError && err.status === 404)) {
        this.failed(err);
        return;
      }
    }
    const index = this.order.indexOf(job.job_id);
    this.render(this.order.filter((id) => id !== job.job_id).map((id) => this.items.get(id).job));
    // Keep the keyboard near where it was.
    const near = this.items.get(this.order[Math.min(index, this.order.length - 1)]);
    (near ? near.remove : this.el.heading).focus();
  }

  /** Shows `err`; false when the session ended (stop what was going on). */
  failed(err) {
    if (err instanceof ApiError && err.status === 401) {
      this.onExpired();
      return false;
    }
    this.showError(explain(err));
    return true;
  }

  showError(text) {
    this.el.error.textContent = text;
    this.el.error.hidden = !text;
  }
}

// Choosing or dropping a file, and uploading it with a progress bar.

import { Cancelled, explain } from "./errors.js";
import { upload } from "./api.js";
import { bytes } from "./format.js";

/**
 * Wires the upload form. `token()` gives the current token; after an
 * upload `onUploaded(answer, file)`; on a 401 `onExpired()`.
 */
export function setUp(el, { token, onUploaded, onExpired }) {
  let dropped = null;
  let running = null;

  const chosen = () => dropped || el.file.files[0] || null;
  const showError = (text) => {
    el.error.textContent = text;
    el.error.hidden = !text;
  };
  const describeChoice = () => {
    const file = chosen();
    el.label.textContent = file
      ? `Chosen: ${file.name} (${bytes(file.size)})`
      : "Choose a video or audio file, or drop one here";
  };

  el.file.addEventListener("change", () => {
    dropped = null;
    showError("");
    describeChoice();
  });

  for (const type of ["dragenter", "dragover"]) {
    el.dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      el.dropZone.classList.add("dragging");
    });
  }
  el.dropZone.addEventListener("dragleave", () => el.dropZone.classList.remove("dragging"));
  el.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    el.dropZone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) {
      dropped = file;
      el.file.value = "";
      showError("");
      describeChoice();
    }
  });

  el.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = chosen();
    if (!file) {
      showError("Choose a file first.");
      el.file.focus();
      return;
    }
    if (running) {
      return;
    }
    showError("");
    el.submit.disabled = true;
    el.status.hidden = false;
    el.cancel.hidden = false;
    el.bar.value = 0;
    el.statusLabel.textContent = `Upload of ${file.name}`;
    el.text.textContent = `0 bytes of ${bytes(file.size)} (0%)`;
    running = upload(file, token(), (sent, total) => {
      const percent = total > 0 ? Math.floor((sent / total) * 100) : 0;
      el.bar.value = percent;
      el.text.textContent = `${bytes(sent)} of ${bytes(total)} (${percent}%)`;
    });
    try {
      const answer = await running.done;
      el.bar.value = 100;
      el.cancel.hidden = true;
      el.text.textContent = `Uploaded ${file.name}. It is being converted: see it in your files below.`;
      dropped = null;
      el.form.reset();
      describeChoice();
      onUploaded(answer, file);
    } catch (err) {
      el.status.hidden = true;
      if (err instanceof Cancelled) {
        showError("Upload cancelled. Nothing was stored.");
      } else if (err.status === 401) {
        onExpired();
      } else if (err.status === 0) {
        // The server answers an upload it refuses (over the size limit or
        // the quota) before reading all of it, then stops reading: a large
        // file's upload then breaks off without the answer reaching us.
        showError(
          "The upload stopped before it finished. The server refuses a file larger than its " +
            "upload limit, or than what is left of your storage quota, this way; if neither " +
            "can be the case, check your connection and try again.",
        );
      } else {
        showError(explain(err));
      }
    } finally {
      running = null;
      el.submit.disabled = false;
    }
  });

  el.cancel.addEventListener("click", () => {
    if (running) {
      running.cancel();
    }
  });

  return {
    /** Stops a running upload (logging out). */
    reset() {
      if (running) {
        running.cancel();
      }
      dropped = null;
      el.form.reset();
      el.status.hidden = true;
      showError("");
      describeChoice();
    },
  };
}

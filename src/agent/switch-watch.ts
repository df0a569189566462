/**
 * Learning of a switch's end when it happens rather than at the next poll: the wrapper writes
 * its exit status to a file, and an inotify watch (`fs.watch`) on the file's directory wakes the
 * waiter the moment the file appears or changes. A timer bounds every wait, because no file is
 * written when the switch is killed outright (SIGKILL, a reboot, a `failed` unit) and because a
 * watch can be unavailable (inotify limits, an unusual file system): the caller backs the timer
 * off, so the fallback costs little while staying correct without any watch at all.
 */
import { type FSWatcher, watch } from "node:fs";
import { basename, dirname } from "node:path";
import { Parked } from "./wait.js";

export interface SwitchWatch {
  /**
   * Resolves once the watched file changed since the last call (or since the watch opened), or
   * after `ms`; rejects with Parked when `signal` aborts.
   */
  changed(ms: number, signal: AbortSignal, where: string): Promise<void>;
  close(): void;
}

/** Watches `file`; open it *before* the first look at the file, so no change falls between. */
export function watchFile(file: string): SwitchWatch {
  const name = basename(file);
  let pending = false;
  let wake: (() => void) | undefined;
  let watcher: FSWatcher | undefined;
  const onChange = () => {
    pending = true;
    wake?.();
  };
  try {
    // Not persistent: the timer of a wait keeps the process alive, the watch alone must not.
    watcher = watch(dirname(file), { persistent: false }, (_event, changed) => {
      // Linux names the entry; elsewhere it may be null: any change is worth a look.
      if (changed === null || changed === name) onChange();
    });
    watcher.on("error", () => {
      watcher?.close();
      watcher = undefined;
    });
  } catch {
    // No watch (the directory is missing, inotify is exhausted): the timer alone decides.
  }
  return {
    changed(ms, signal, where) {
      if (pending) {
        pending = false;
        return Promise.resolve();
      }
      return new Promise((resolve, reject) => {
        if (signal.aborted) return reject(new Parked(where));
        const done = () => {
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          wake = undefined;
          pending = false;
          resolve();
        };
        const onAbort = () => {
          clearTimeout(timer);
          wake = undefined;
          reject(new Parked(where));
        };
        const timer = setTimeout(done, ms);
        wake = done;
        signal.addEventListener("abort", onAbort, { once: true });
      });
    },
    close() {
      watcher?.close();
      watcher = undefined;
      wake = undefined;
    },
  };
}

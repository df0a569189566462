/** The dashboard's entry point (bundled by scripts/build-dashboard.mjs into dist/dashboard/app.js). */
import "./styles.css";
import { render } from "preact";
import { App } from "./app.js";

render(<App />, document.getElementById("app")!);

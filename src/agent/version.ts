/** The agent's version, reported to the control plane (kept equal to package.json by a test). */
export const AGENT_VERSION = "0.1.0";

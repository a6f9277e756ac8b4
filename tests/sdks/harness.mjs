// Plumbing shared by the Node SDK scripts; the documented settings live in the scripts, between
// `// [doc:NAME]` and `// [/doc]` (docs/sdks.md shows those blocks verbatim).
export const SIDEPOOL = process.env.SIDECAR_URL; // http://127.0.0.1:8080 in production
export const API_KEY = "test-key";
export const API_SECRET = "test-secret";
const RUN = process.env.RUN_ID ?? "local";

// A client order id unique to this script and run: the exchange must see it exactly once.
export const orderId = (sdk) => `${sdk}${RUN}`.slice(0, 32);

export function ok(what) {
  console.log(`ok  ${what}`);
}

export function check(condition, what, detail) {
  if (!condition) {
    console.log(`FAILED  ${what}: ${JSON.stringify(detail)}`);
    process.exit(1);
  }
}

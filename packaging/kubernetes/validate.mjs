// Validate Kubernetes manifests against the API's schemas (npm
// kubernetes-models, generated from the Kubernetes OpenAPI document).
// usage: node validate.mjs FILE.yaml...   (NODE_PATH-free: run from a
// directory whose node_modules has kubernetes-models and js-yaml)
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import path from "node:path";

const modules = process.env.SB_K8S_MODULES;
const require = createRequire(path.join(modules, "node_modules", "x.js"));
const yaml = require("js-yaml");

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const dir = group === "" ? version : `${group}/${version}`;
  const file = path.join(modules, "node_modules", "kubernetes-models", dir, `${kind}.js`);
  const mod = await import(pathToFileURL(file).href);
  return mod[kind];
}

let failed = 0;
for (const file of process.argv.slice(2)) {
  const docs = yaml.loadAll(readFileSync(file, "utf8")).filter((d) => d);
  for (const doc of docs) {
    const what = `${file}: ${doc.kind}/${doc.metadata && doc.metadata.name}`;
    try {
      const Model = await modelFor(doc.apiVersion, doc.kind);
      if (!Model) throw new Error(`unknown kind ${doc.apiVersion} ${doc.kind}`);
      new Model(doc).validate();
      console.log(`ok    ${what}`);
    } catch (e) {
      failed++;
      console.log(`FAIL  ${what}: ${e.message}`);
    }
  }
}
process.exit(failed ? 1 : 0);

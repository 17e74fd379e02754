// Load a trace-event JSON file the way speedscope's own importer does, outside a browser.
// usage: node speedscope_import.mjs <speedscope package dir> <trace.json>
// Prints the imported profiles as JSON: per profile its frames (key, name, total, self weight).
// The release bundle is a browser app: its last statement mounts the UI; here that statement is
// replaced by exposing the importer function it uses for trace events, and the DOM is stubbed.
import fs from 'node:fs'
import path from 'node:path'
import vm from 'node:vm'

const [pkgDir, tracePath] = process.argv.slice(2)
const releaseDir = path.join(pkgDir, 'dist', 'release')
const bundle = fs.readdirSync(releaseDir).find(f => /^speedscope-.*\.js$/.test(f))
const src = fs.readFileSync(path.join(releaseDir, bundle), 'utf8')
// ...;function _f(t){return Ny(t)?xy(t):sf(t)?Dl(t.traceEvents):...}  -- importTraceEvents
const importer = /function ([A-Za-z_$]+)\(t\)\{return [A-Za-z_$]+\(t\)\?[A-Za-z_$]+\(t\):[A-Za-z_$]+\(t\)\?[A-Za-z_$]+\(t\.traceEvents\)/.exec(src)
const mount = /console\.log\(`speedscope v\$\{[A-Za-z_$]+\(\)\.version\}`\);.*\}\)\(\);/s
if (!importer || !mount.test(src)) {
  console.error('unexpected speedscope bundle layout')
  process.exit(3)
}
const patched = src.replace(mount, `globalThis.__importTraceEvents=${importer[1]};})();`)
const stub = () => new Proxy(function () {}, {
  get: (_t, k) => (k === Symbol.toPrimitive ? () => '' : stub()),
  apply: () => stub(),
  construct: () => stub(),
})
const ctx = {
  console: { log() {}, warn() {}, error: console.error, info() {} },
  window: stub(), document: stub(), navigator: stub(), location: stub(), localStorage: stub(),
  fetch: stub(), requestAnimationFrame: stub(), matchMedia: stub(),
  setTimeout, clearTimeout, setInterval, clearInterval, URL, TextDecoder, TextEncoder, performance, WebAssembly,
}
ctx.globalThis = ctx
ctx.self = ctx
vm.createContext(ctx)
vm.runInContext(patched, ctx)
const group = ctx.__importTraceEvents(JSON.parse(fs.readFileSync(tracePath, 'utf8')))
const profiles = group.profiles.map(p => {
  const frames = []
  p.forEachFrame(f => frames.push({ key: String(f.key), name: f.name, total: f.getTotalWeight(), self: f.getSelfWeight() }))
  return { name: p.getName(), frames }
})
console.log(JSON.stringify(profiles))

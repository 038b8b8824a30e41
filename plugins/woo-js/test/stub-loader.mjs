export async function resolve(specifier, context, next) {
  const m = /^berth:connector\/([a-z-]+)@/.exec(specifier);
  if (m) return { url: new URL(`./stubs/${m[1]}.mjs`, import.meta.url).href, shortCircuit: true };
  return next(specifier, context);
}

// Map the berth:connector/* imports to the stubs beside this file, so the connector's
// own module runs under Node: `node --import ./test/register.mjs --test test/`.
import { register } from 'node:module';

register('./stub-loader.mjs', import.meta.url);

// Parses an AsyncAPI document with the official parser (@asyncapi/parser)
// and prints every diagnostic; exits 1 when any is an error.
// Usage: node asyncapi-validate.mjs FILE
import { Parser } from '@asyncapi/parser';
import { readFileSync } from 'node:fs';
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(process.argv[2], 'utf8'));
for (const d of diagnostics) console.log(d.severity, d.code, d.message, JSON.stringify(d.path));
const errors = diagnostics.filter(d => d.severity === 0);
console.log(`${errors.length} errors, ${diagnostics.length - errors.length} other diagnostics, document ${document ? 'parsed' : 'missing'}`);
process.exit(errors.length === 0 && document ? 0 : 1);

// Canned answers, in order; every request is kept for the test to read.
export const sent = [];
export const answers = [];
export function send(req) {
  sent.push(req);
  const next = answers.shift();
  if (next instanceof Error) throw next;
  return next;
}

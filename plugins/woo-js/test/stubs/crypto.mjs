import { createHmac } from 'node:crypto';

export function hmacSha256(key, data) {
  return new Uint8Array(createHmac('sha256', Buffer.from(key)).update(Buffer.from(data)).digest());
}
export function base64Encode(data) {
  return Buffer.from(data).toString('base64');
}

export const settings = new Map();
export function get(key) {
  return settings.get(key);
}

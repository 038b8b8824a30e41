export function counterAdd() {}

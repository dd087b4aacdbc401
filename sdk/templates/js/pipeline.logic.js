// The settings and control messages of {{name}}, kept free of host imports so `node --test`
// runs them as is.

/** `capability/model-id` as `{ capability, modelId }`, or null unless both are there. */
export function modelOf(setting) {
  const at = setting.indexOf('/');
  if (at <= 0 || at === setting.length - 1) return null;
  return { capability: setting.slice(0, at), modelId: setting.slice(at + 1) };
}

/** Whether a control message (JSON text) asks to pause (true), resume (false) or neither (null). */
export function pauseOf(message) {
  let parsed;
  try {
    parsed = JSON.parse(message);
  } catch {
    return null;
  }
  return typeof parsed?.pause === 'boolean' ? parsed.pause : null;
}

// Shared plumbing for the Inngest suites: waiting for a condition with a deadline (never a
// fixed sleep), and starting and stopping an app's server.

/// Polls `check` until it returns something truthy, for at most `ms`; fails naming `what`.
export async function eventually(check, ms, what) {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/// Starts `server` on 127.0.0.1:`port` (0: any); resolves once it listens.
export function listen(server, port = 0) {
  return new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
}

/// Stops `server`, closing the idle keep-alive connections rowcast holds to it first (else
/// the close waits for them to time out).
export function stop(server) {
  server.closeAllConnections()
  return new Promise((resolve) => server.close(resolve))
}

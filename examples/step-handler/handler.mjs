// A rowcast HTTP step handler in plain Node (no dependencies): verify the signature, run the
// job from the top, return memoized outputs for finished steps, run the first missing one.
import { createHmac, timingSafeEqual } from 'node:crypto'
import { createServer } from 'node:http'

const SECRET = process.env.ROWCAST_SIGNING_SECRET ?? ''
function verified(header = '', body) {
  const [, t, mac] = header.match(/^t=(\d+),v1=([0-9a-f]{64})$/) ?? []
  if (!t || Math.abs(Date.now() / 1000 - Number(t)) > 300) return false
  const want = createHmac('sha256', SECRET).update(`${t}.${body}`).digest()
  return timingSafeEqual(want, Buffer.from(mac, 'hex'))
}

// The job itself: each step runs once, even across retries; rowcast stores its output.
async function summarize(job, step) {
  const text = await step('fetch', async () => `document ${job.input.doc} has five words`)
  const words = await step('count', async () => text.split(' ').length)
  return { text, words }
}

class StepDone { constructor(id, output) { Object.assign(this, { id, output }) } }

createServer(async (req, res) => {
  let body = ''
  for await (const chunk of req) body += chunk
  const reply = (status, json) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(json))
  if (!verified(req.headers['x-rowcast-signature'], body)) return reply(401, { error: { message: 'bad signature', retriable: false } })
  const { job, steps } = JSON.parse(body)
  const step = async (id, run) => { if (id in steps) return steps[id]; throw new StepDone(id, await run()) }
  try {
    reply(200, { done: true, output: await summarize(job, step) })
  } catch (e) {
    if (e instanceof StepDone) reply(200, { step: { id: e.id, output: e.output }, message: `finished ${e.id}` })
    else reply(500, { error: { message: String(e?.message ?? e) } })
  }
}).listen(Number(process.env.PORT ?? 8787), '127.0.0.1', function () { console.log(`listening on ${this.address().port}`) })

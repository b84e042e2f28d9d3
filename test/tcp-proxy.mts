// A TCP forwarder on loopback that a test can freeze: while frozen it reads nothing from either
// side, so what one end sends stays in kernel buffers and never reaches the other; close() then
// drops it. Put between a standby and its primary, it makes a standby that lags as far as the
// test wants, and loses the rest when the primary dies. It can also hold new connections back for
// a while (a slow network path for a cancel request, which travels on a connection of its own).
import { createServer, connect, type Server, type Socket } from 'node:net'

export class TcpProxy {
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  #frozen = false
  #delayMs = 0

  private constructor(server: Server) {
    this.#server = server
  }

  /** Listens on a free loopback port and forwards each connection to `targetPort`. */
  static async start(targetPort: number): Promise<TcpProxy> {
    let proxy: TcpProxy | undefined
    const server = createServer((client) => proxy!.#forward(client, targetPort))
    proxy = new TcpProxy(server)
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', resolve)
    })
    return proxy
  }

  get port(): number {
    return (this.#server.address() as { port: number }).port
  }

  /** Stops forwarding in both directions, on open and future connections. */
  freeze(): void {
    this.#frozen = true
    for (const socket of this.#sockets) socket.pause()
  }

  /** Holds each connection opened from now on for `ms` before it reaches the target (0: none). */
  delayConnections(ms: number): void {
    this.#delayMs = ms
  }

  /** Drops every connection, with what they had not forwarded, and stops listening. */
  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }

  #forward(client: Socket, targetPort: number): void {
    if (this.#delayMs === 0) return this.#pipe(client, targetPort)
    client.pause() // what it sends waits in the kernel meanwhile
    this.#sockets.add(client)
    setTimeout(() => {
      this.#sockets.delete(client)
      if (!client.destroyed) this.#pipe(client, targetPort)
    }, this.#delayMs)
  }

  #pipe(client: Socket, targetPort: number): void {
    const upstream = connect(targetPort, '127.0.0.1')
    for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
      this.#sockets.add(from)
      from.on('data', (chunk) => { if (!to.destroyed) to.write(chunk) })
      // A reset or an end on one side ends the other: as a dropped network path looks to both.
      from.on('error', () => to.destroy())
      from.on('close', () => {
        this.#sockets.delete(from)
        to.destroy()
      })
      if (this.#frozen) from.pause()
      else from.resume()
    }
  }
}

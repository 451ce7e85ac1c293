// Who is logged in (GET /api/session: the page cannot read its HttpOnly cookie), log in and out.

import { ApiError, api, setUnauthorizedHandler } from "./api/client";
import type { SessionInfo } from "./api/types";

class Session {
  info = $state<SessionInfo | null>(null);
  checked = $state(false);
  expired = $state(false); // a call got 401 while logged in: the login says why
  get canWrite(): boolean {
    return this.info?.role === "admin";
  }
}

export const session = new Session();

setUnauthorizedHandler(() => {
  if (session.info) session.expired = true;
  session.info = null;
});

export async function checkSession(): Promise<void> {
  try {
    session.info = await api.get("/api/session");
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 401) throw e;
    session.info = null;
  } finally {
    session.checked = true;
  }
}

export async function login(token: string): Promise<void> {
  session.info = await api.post("/api/login", { token });
  session.expired = false;
}

export async function logout(): Promise<void> {
  try {
    await api.post("/api/logout");
  } finally {
    session.info = null;
  }
}

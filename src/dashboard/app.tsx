/** Sign-in gate, navigation and the page for the current route. */
import { useEffect, useState } from "preact/hooks";
import { href, type Route, useRoute } from "./router.js";
import { forgetKey, roleName, type Session, signIn, storedKey } from "./session.js";
import { FleetPage } from "./views/fleet.js";
import { HostPage } from "./views/host.js";
import { ReleasesPage } from "./views/releases.js";
import { RolloutPage } from "./views/rollout.js";
import { RolloutsPage } from "./views/rollouts.js";
import { SignIn } from "./views/sign-in.js";

export function App() {
  const [session, setSession] = useState<Session | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const expired = () => {
    setSession(null);
    setNotice("The control plane no longer accepts your key (revoked?). Sign in again.");
  };
  const [restoring, setRestoring] = useState(() => storedKey() !== null);
  const route = useRoute();

  useEffect(() => {
    const key = storedKey();
    if (!key) return;
    signIn(key, expired)
      .then(setSession, () => forgetKey())
      .finally(() => setRestoring(false));
  }, []);

  if (restoring) return <p class="muted center">Signing in…</p>;
  if (!session)
    return (
      <SignIn
        notice={notice}
        signIn={(key) => signIn(key, expired)}
        onSignedIn={(s) => {
          setNotice(null);
          setSession(s);
        }}
      />
    );

  const signOut = () => {
    forgetKey();
    setSession(null);
  };
  return (
    <div class="layout">
      <nav class="top">
        <a class="brand" href={href.fleet()}>
          nixfleet
        </a>
        <NavLink route={route} to="fleet" label="Fleet" />
        <NavLink route={route} to="rollouts" label="Rollouts" />
        <NavLink route={route} to="releases" label="Releases" />
        <span class="spacer" />
        <span class="who" data-testid="who">
          {session.keyName} · {roleName(session.role)}
        </span>
        <button type="button" class="link" onClick={signOut}>
          Sign out
        </button>
      </nav>
      <main>
        <Page route={route} session={session} />
      </main>
    </div>
  );
}

function NavLink({
  route,
  to,
  label,
}: {
  route: Route;
  to: "fleet" | "rollouts" | "releases";
  label: string;
}) {
  const active =
    route.page === to ||
    (to === "fleet" && route.page === "host") ||
    (to === "rollouts" && route.page === "rollout");
  return (
    <a href={href[to]()} class={active ? "active" : ""} aria-current={active ? "page" : undefined}>
      {label}
    </a>
  );
}

function Page({ route, session }: { route: Route; session: Session }) {
  switch (route.page) {
    case "fleet":
      return <FleetPage session={session} />;
    case "host":
      return <HostPage key={route.id} session={session} id={route.id} />;
    case "rollouts":
      return <RolloutsPage session={session} />;
    case "rollout":
      return <RolloutPage key={route.id} session={session} id={route.id} />;
    case "releases":
      return <ReleasesPage session={session} />;
  }
}

-- 55_campaigns.sql — templates and campaigns: GET/POST /v1/templates,
-- GET/POST /v1/campaigns, GET /v1/campaigns/:id, POST /v1/campaigns/:id/send;
-- the scheduler's entry points (campaigns_start_due, campaigns_complete_finished)
-- and recurring campaigns through pg_cron.
--
-- Launch (campaign_launch) locks the campaign row (FOR UPDATE), so two
-- launches of one campaign run one after the other and the second finds it
-- 'running' (409 CONFLICT): one run, one debit. It personalises the body per
-- recipient ({{name}}, {{custom1..3}}), counts segments per recipient, debits
-- the whole campaign at once (402 INSUFFICIENT_BALANCE or nothing) and
-- inserts every message in one statement. Opted-out numbers are left out.
-- Throttling (metadata.throttling "N_sec" | "N_min" | "N_hour") spreads the
-- messages' next_attempt_at: the dispatcher only claims due rows, so it
-- honours the pace without knowing about campaigns.
--
-- campaigns_start_due() launches due scheduled campaigns, claiming each with
-- FOR UPDATE SKIP LOCKED so any number of schedulers can run it at once.
-- Progress is computed on read: sent_count counts the campaign's messages in
-- sent or delivered (index messages_campaign below).

CREATE TABLE envoisms.templates (
    account_id   text NOT NULL REFERENCES envoisms.accounts,
    template_id  text NOT NULL CHECK (template_id ~ '^tpl_[0-9a-f]{28}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    channel      text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    language     text CHECK (language ~ '^[a-z]{2,3}(_[A-Z]{2})?$'),
    body         text NOT NULL CHECK (length(body) BETWEEN 1 AND 1600),
    status       text NOT NULL DEFAULT 'approved' CHECK (status IN ('pending', 'approved', 'rejected')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, template_id),
    CHECK (channel <> 'whatsapp' OR language IS NOT NULL)
);

CREATE TABLE envoisms.campaigns (
    account_id          text NOT NULL REFERENCES envoisms.accounts,
    campaign_id         text NOT NULL CHECK (campaign_id ~ '^cmp_[0-9a-f]{28}$'),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    channel             text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    list_id             text,
    template_id         text,
    body                text CHECK (length(body) BETWEEN 1 AND 1600),
    sender_id           text NOT NULL DEFAULT 'ENVOISMS',
    buttons             jsonb,
    metadata            jsonb,
    status              text NOT NULL DEFAULT 'draft'
                        CHECK (status IN ('draft', 'scheduled', 'running', 'completed', 'cancelled')),
    scheduled_at        timestamptz,
    started_at          timestamptz,
    completed_at        timestamptz,
    throttle_per_minute numeric(12,4) CHECK (throttle_per_minute > 0),   -- NULL = as fast as possible
    total_count         int CHECK (total_count >= 0),
    sandbox             boolean NOT NULL DEFAULT false,
    api_key_id          text,
    cloned_from         text,
    recurring_job_id    bigint,
    recurring_schedule  text,
    error_code          text,          -- why a scheduled launch failed (status 'cancelled')
    error_message       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, campaign_id),
    FOREIGN KEY (account_id, list_id) REFERENCES envoisms.contact_lists,
    FOREIGN KEY (account_id, template_id) REFERENCES envoisms.templates,
    CHECK ((body IS NULL) <> (template_id IS NULL)),
    CHECK (status <> 'scheduled' OR scheduled_at IS NOT NULL)
);
CREATE INDEX campaigns_due ON envoisms.campaigns (scheduled_at) WHERE status = 'scheduled';
CREATE INDEX campaigns_running ON envoisms.campaigns (account_id) WHERE status = 'running';
-- Progress and completion read a campaign's messages.
CREATE INDEX messages_campaign ON envoisms.messages (account_id, campaign_id, status) WHERE campaign_id IS NOT NULL;

SELECT pg_catalog.pg_extension_config_dump('envoisms.templates', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.campaigns', '');

-- ---- templates

CREATE FUNCTION envoisms.template_json(t envoisms.templates) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', t.template_id, 'name', t.name, 'channel', t.channel, 'language', t.language,
                              'body', t.body, 'status', t.status, 'created_at', envoisms.iso_time(t.created_at))
$$;

-- Create a message template (tpl_…); WhatsApp templates carry a name and a
-- language (fr, ar, en_US …). Templates are approved at once: there is no
-- review step in this implementation (the operator may set status).
CREATE FUNCTION envoisms.template_create(account_id text, name text, body text, channel text DEFAULT 'sms',
                                         language text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    t envoisms.templates;
BEGIN
    channel := coalesce(channel, 'sms');
    IF name IS NULL OR length(btrim(name)) = 0 OR length(name) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name is required (1 to 100 characters)', 'name');
    END IF;
    IF channel NOT IN ('sms', 'whatsapp') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'channel must be "sms" or "whatsapp"', 'channel');
    END IF;
    PERFORM envoisms.check_body(body, 'body');
    IF language IS NOT NULL AND language !~ '^[a-z]{2,3}(_[A-Z]{2})?$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'language must be a language code such as fr, ar or en_US', 'language');
    END IF;
    IF channel = 'whatsapp' AND language IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'language is required for a whatsapp template', 'language');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = template_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    INSERT INTO envoisms.templates (account_id, template_id, name, channel, language, body)
    VALUES (account_id, envoisms.new_id('tpl'), btrim(name), channel, language, body)
    RETURNING * INTO t;
    RETURN envoisms.template_json(t);
END
$$;
COMMENT ON FUNCTION envoisms.template_create(text, text, text, text, text) IS
'Create a message template (POST /v1/templates)';

CREATE FUNCTION envoisms.template_list(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.template_json(ROW(t.*)::envoisms.templates) ORDER BY t.template_id DESC), '[]'))
          FROM envoisms.templates t WHERE t.account_id = template_list.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.template_list(text) IS
'Every template of an account (GET /v1/templates)';

-- ---- campaigns

-- Messages per minute from metadata.throttling ("50_min", "2_sec", "300_hour"), or NULL.
CREATE FUNCTION envoisms.campaign_throttle(metadata jsonb) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := metadata->'throttling';
    m text[];
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    m := regexp_match(CASE WHEN jsonb_typeof(v) = 'string' THEN v #>> '{}' END, '^([1-9][0-9]{0,5})_(sec|min|hour)$');
    IF m IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'metadata.throttling must look like "50_min", "2_sec" or "300_hour" (1 to 999999 messages per unit)',
            'metadata.throttling');
    END IF;
    RETURN round(m[1]::numeric * CASE m[2] WHEN 'sec' THEN 60 WHEN 'min' THEN 1 ELSE 1 / 60.0 END, 4);
END
$$;

-- The contract's campaign shape, with live progress.
CREATE FUNCTION envoisms.campaign_json(c envoisms.campaigns) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'id', c.campaign_id, 'name', c.name, 'channel', c.channel, 'list_id', c.list_id,
            'template_id', c.template_id, 'body', c.body, 'sender_id', c.sender_id, 'status', c.status,
            'scheduled_at', envoisms.iso_time(c.scheduled_at), 'buttons', c.buttons, 'metadata', c.metadata,
            'total_count', coalesce(c.total_count, 0),
            'sent_count', CASE WHEN c.started_at IS NULL THEN 0 ELSE
                              (SELECT count(*) FROM envoisms.messages m
                                WHERE m.account_id = c.account_id AND m.campaign_id = c.campaign_id
                                  AND m.status IN ('sent', 'delivered')) END,
            'started_at', envoisms.iso_time(c.started_at), 'completed_at', envoisms.iso_time(c.completed_at),
            'recurring_schedule', c.recurring_schedule,
            'error', CASE WHEN c.error_code IS NOT NULL
                          THEN jsonb_build_object('code', c.error_code, 'message', c.error_message) END,
            'created_at', envoisms.iso_time(c.created_at)));
END
$$;

-- Create a campaign (draft, or scheduled when scheduled_at is given);
-- returns the campaign (the contract's {"id", "status"} and the rest).
CREATE FUNCTION envoisms.campaign_create(account_id text, name text, body text DEFAULT NULL,
                                         template_id text DEFAULT NULL, channel text DEFAULT 'sms',
                                         list_id text DEFAULT NULL, sender_id text DEFAULT NULL,
                                         scheduled_at timestamptz DEFAULT NULL, buttons jsonb DEFAULT NULL,
                                         metadata jsonb DEFAULT NULL, api_key_id text DEFAULT NULL,
                                         sandbox boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    t envoisms.templates;
    throttle numeric;
    btns jsonb;
BEGIN
    channel := coalesce(channel, 'sms');
    IF name IS NULL OR length(btrim(name)) = 0 OR length(name) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name is required (1 to 200 characters)', 'name');
    END IF;
    PERFORM envoisms.check_account_channel(account_id, channel);
    IF body IS NULL AND template_id IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'body or template_id is required', 'body');
    ELSIF body IS NOT NULL AND template_id IS NOT NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'give body or template_id, not both', 'template_id');
    END IF;
    IF body IS NOT NULL THEN
        PERFORM envoisms.check_body(body, 'body');
    ELSE
        SELECT * INTO t FROM envoisms.templates x
         WHERE x.account_id = campaign_create.account_id AND x.template_id = campaign_create.template_id;
        IF NOT FOUND THEN
            PERFORM envoisms.raise_error('NOT_FOUND', 'template_id: no such template', 'template_id');
        ELSIF t.status <> 'approved' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('template_id: the template is %s, not approved', t.status), 'template_id');
        ELSIF t.channel <> channel THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('template_id: the template is for %s, the campaign for %s', t.channel, channel), 'template_id');
        END IF;
    END IF;
    PERFORM envoisms.check_list(account_id, list_id);
    BEGIN
        sender_id := envoisms.check_sender_id(sender_id);
    EXCEPTION WHEN SQLSTATE 'EV400' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'sender_id must be an alphanumeric sender id of 1 to 11 characters or a number of 3 to 15 digits', 'sender_id');
    END;
    IF scheduled_at IS NOT NULL AND scheduled_at <= now() THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'scheduled_at must be in the future', 'scheduled_at');
    END IF;
    btns := envoisms.check_buttons(buttons, channel);
    IF channel = 'whatsapp' THEN
        PERFORM envoisms.check_whatsapp_connected(account_id, coalesce(sandbox, false));
        IF template_id IS NOT NULL AND btns IS NOT NULL THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                'a WhatsApp template carries the buttons it was approved with; give buttons with a body, not a template_id',
                'buttons');
        END IF;
    END IF;
    IF metadata IS NOT NULL AND (jsonb_typeof(metadata) <> 'object' OR octet_length(metadata::text) > 8192) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object of at most 8 KB', 'metadata');
    END IF;
    throttle := envoisms.campaign_throttle(metadata);
    INSERT INTO envoisms.campaigns (account_id, campaign_id, name, channel, list_id, template_id, body, sender_id,
                                    buttons, metadata, status, scheduled_at, throttle_per_minute, sandbox, api_key_id)
    VALUES (account_id, envoisms.new_id('cmp'), btrim(name), channel, list_id, template_id, body, sender_id,
            btns, metadata, CASE WHEN scheduled_at IS NULL THEN 'draft' ELSE 'scheduled' END, scheduled_at,
            throttle, coalesce(sandbox, false), api_key_id)
    RETURNING * INTO c;
    RETURN envoisms.campaign_json(c);
END
$$;
COMMENT ON FUNCTION envoisms.campaign_create(text, text, text, text, text, text, text, timestamptz, jsonb, jsonb, text, boolean) IS
'Create a campaign, a draft or scheduled (POST /v1/campaigns)';

-- One campaign of the account, or NOT_FOUND.
CREATE FUNCTION envoisms.campaign_get(account_id text, campaign_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
BEGIN
    SELECT * INTO c FROM envoisms.campaigns x
     WHERE x.account_id = campaign_get.account_id AND x.campaign_id = campaign_get.campaign_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    RETURN envoisms.campaign_json(c);
END
$$;
COMMENT ON FUNCTION envoisms.campaign_get(text, text) IS
'One campaign with its progress (GET /v1/campaigns/:id)';

-- Every campaign of the account, newest first.
CREATE FUNCTION envoisms.campaign_list(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.campaign_json(ROW(c.*)::envoisms.campaigns) ORDER BY c.campaign_id DESC), '[]'))
          FROM envoisms.campaigns c WHERE c.account_id = campaign_list.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.campaign_list(text) IS
'Every campaign of an account (GET /v1/campaigns)';

-- One recipient of a campaign run, validated (see campaign_send).
CREATE TYPE envoisms.bulk_entry AS (
    ord       int,
    id        text,
    to_number text,
    body      text,
    metadata  jsonb,
    encoding  text,
    segments  int,
    error     text,       -- API error code when the entry is invalid
    field     text,
    detail    text
);

-- Launch a draft or scheduled campaign now: one message per list member
-- (opted-out numbers left out), the whole cost debited at once; returns
-- {"id", "queued", "total", "opted_out"}. A campaign runs once: a second
-- launch is CONFLICT. `sandbox` (a test key) makes the run a sandbox run.
-- On WhatsApp (90_whatsapp.sql) the account needs its WhatsApp number; a
-- campaign with a body is free text, so it reaches only the members whose
-- 24-hour window is open at launch (the others are left out and counted in
-- "out_of_window"; none left is OUT_OF_24H_WINDOW), while a template
-- campaign reaches every member, each message carrying the template's
-- name, language and the member's values of its {{…}} parameters
-- (metadata.template.parameters: [{"name", "text"}], in order of first use).
CREATE FUNCTION envoisms.campaign_launch(account_id text, campaign_id text, sandbox boolean DEFAULT false,
                                         api_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    t envoisms.templates;
    price record;
    started timestamptz := now();
    text_body text;
    meta jsonb;
    members int;
    opted int;
    outside int := 0;
    free_text_whatsapp boolean;
    params text[];
    n int;
    too_long record;
    units int;
    run envoisms.bulk_entry[];
    spacing interval;
    run_sandbox boolean;
BEGIN
    SELECT * INTO c FROM envoisms.campaigns x
     WHERE x.account_id = campaign_launch.account_id AND x.campaign_id = campaign_launch.campaign_id
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    IF c.status NOT IN ('draft', 'scheduled') THEN
        PERFORM envoisms.raise_error('CONFLICT', format('the campaign is %s; a campaign is sent once', c.status), 'id');
    END IF;
    IF c.list_id IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the campaign has no list_id to send to', 'list_id');
    END IF;
    PERFORM envoisms.check_account_channel(account_id, c.channel);
    run_sandbox := c.sandbox OR coalesce(sandbox, false);
    IF c.channel = 'whatsapp' THEN
        PERFORM envoisms.check_whatsapp_connected(account_id, run_sandbox);
    END IF;
    free_text_whatsapp := c.channel = 'whatsapp' AND c.template_id IS NULL;
    text_body := c.body;
    meta := coalesce(c.metadata, '{}') || jsonb_build_object('campaign_id', c.campaign_id);
    IF c.template_id IS NOT NULL THEN
        SELECT * INTO t FROM envoisms.templates x WHERE x.account_id = c.account_id AND x.template_id = c.template_id;
        text_body := t.body;
        meta := meta || jsonb_build_object('template', jsonb_build_object('id', t.template_id, 'name', t.name,
                                                                          'language', t.language));
        -- the parameters a WhatsApp template is sent with, in order of first use
        IF c.channel = 'whatsapp' THEN
            SELECT array_agg(p ORDER BY first_at) INTO params
              FROM (SELECT m[1] AS p, min(ord) AS first_at
                      FROM regexp_matches(t.body, '\{\{(name|custom1|custom2|custom3)\}\}', 'g') WITH ORDINALITY AS x(m, ord)
                     GROUP BY m[1]) u;
        END IF;
    END IF;
    SELECT * INTO price FROM envoisms.channel_prices(account_id, c.channel);
    spacing := CASE WHEN c.throttle_per_minute IS NOT NULL
                    THEN make_interval(secs => 60 / c.throttle_per_minute) ELSE interval '0' END;

    -- the recipients, personalised, in order of list membership
    SELECT array_agg(ROW(r.ord, envoisms.new_id('msg'), r.phone, r.body,
                         CASE WHEN params IS NOT NULL THEN jsonb_set(meta, '{template,parameters}', r.parameters) END,
                         s.encoding, CASE WHEN c.channel = 'whatsapp' THEN 1 ELSE s.segments END,
                         NULL, NULL, NULL)::envoisms.bulk_entry ORDER BY r.ord)
             FILTER (WHERE r.reachable),
           count(*) FILTER (WHERE NOT r.reachable)
      INTO run, outside
      FROM (SELECT row_number() OVER (ORDER BY m.added_at, m.contact_id)::int AS ord, k.phone,
                   replace(replace(replace(replace(text_body, '{{name}}', coalesce(k.name, '')),
                           '{{custom1}}', coalesce(k.custom1, '')), '{{custom2}}', coalesce(k.custom2, '')),
                           '{{custom3}}', coalesce(k.custom3, '')) AS body,
                   CASE WHEN params IS NOT NULL THEN
                       (SELECT jsonb_agg(jsonb_build_object('name', p.name, 'text', coalesce(
                                   CASE p.name WHEN 'name' THEN k.name WHEN 'custom1' THEN k.custom1
                                               WHEN 'custom2' THEN k.custom2 ELSE k.custom3 END, '')) ORDER BY p.i)
                          FROM unnest(params) WITH ORDINALITY AS p(name, i)) END AS parameters,
                   NOT free_text_whatsapp OR envoisms.whatsapp_refusal(c.account_id, k.phone, run_sandbox) IS NULL AS reachable
              FROM envoisms.list_members m
              JOIN envoisms.contacts k ON k.account_id = m.account_id AND k.contact_id = m.contact_id
             WHERE m.account_id = c.account_id AND m.list_id = c.list_id
               AND NOT EXISTS (SELECT 1 FROM envoisms.optouts o WHERE o.account_id = k.account_id AND o.phone = k.phone)) r
      LEFT JOIN LATERAL envoisms.sms_segments(CASE WHEN length(r.body) BETWEEN 1 AND 1600 THEN r.body END) s ON true;
    n := coalesce(cardinality(run), 0);
    SELECT count(*) INTO members FROM envoisms.list_members m WHERE m.account_id = c.account_id AND m.list_id = c.list_id;
    opted := members - n - outside;
    IF n = 0 AND outside > 0 THEN
        PERFORM envoisms.raise_error('OUT_OF_24H_WINDOW',
            format('none of the %s contacts of list %s wrote to this account on WhatsApp in the last 24 hours, and '
                   'WhatsApp allows free text only inside that window (%s opted out); use an approved WhatsApp '
                   'template (template_id) or SMS', outside, c.list_id, opted), 'list_id');
    ELSIF n = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('list %s has no contact to send to (%s opted out)', c.list_id, opted), 'list_id');
    END IF;
    SELECT u.to_number, length(u.body) AS len INTO too_long FROM unnest(run) u WHERE u.encoding IS NULL LIMIT 1;
    IF FOUND THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('the personalised message to %s is %s characters; the maximum is 1600', too_long.to_number, too_long.len),
            'body');
    END IF;

    SELECT sum(u.segments) INTO units FROM unnest(run) u;
    IF NOT run_sandbox THEN
        PERFORM envoisms.balance_debit(account_id, units * price.mad);
    END IF;
    INSERT INTO envoisms.messages (account_id, message_id, api_key_id, campaign_id, to_number, sender_id, channel,
                                   body, encoding, segments, cost_mad, cost_eur, charged_mad, sandbox,
                                   metadata, buttons, created_at, updated_at, next_attempt_at, expires_at)
    SELECT c.account_id, u.id, coalesce(campaign_launch.api_key_id, c.api_key_id), c.campaign_id,
           u.to_number, c.sender_id, c.channel, u.body, u.encoding, u.segments,
           price.mad * u.segments, price.eur * u.segments,
           CASE WHEN run_sandbox THEN 0 ELSE price.mad * u.segments END, run_sandbox,
           coalesce(u.metadata, meta), c.buttons, started, started, started + spacing * (u.pos - 1),
           started + spacing * (u.pos - 1) + interval '72 hours'
      FROM unnest(run) WITH ORDINALITY AS u(ord, id, to_number, body, metadata, encoding, segments, error, field,
                                            detail, pos);   -- pos: the place among the recipients sent to

    UPDATE envoisms.campaigns x
       SET status = 'running', started_at = started, total_count = n, error_code = NULL, error_message = NULL
     WHERE x.account_id = c.account_id AND x.campaign_id = c.campaign_id;
    PERFORM envoisms.wake_dispatcher();
    RETURN jsonb_build_object('id', c.campaign_id, 'queued', n, 'total', members, 'opted_out', opted,
                              'cost', jsonb_build_object('eur', envoisms.money(units * price.eur),
                                                         'mad', envoisms.money(units * price.mad)))
        || CASE WHEN free_text_whatsapp THEN jsonb_build_object('out_of_window', outside) ELSE '{}' END;
END
$$;
COMMENT ON FUNCTION envoisms.campaign_launch(text, text, boolean, text) IS
'Send a campaign now: one queued message per reachable list member, debited at once (POST /v1/campaigns/:id/send)';

-- Launch every scheduled campaign that is due; returns how many started.
-- Safe to run from several sessions at once (SKIP LOCKED). A campaign that
-- cannot start (no money, empty list …) is cancelled with the reason in
-- error_code / error_message, instead of being retried forever.
CREATE FUNCTION envoisms.campaigns_start_due() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c record;
    started int := 0;
    shard regclass;
    err_state text;
    err_message text;
BEGIN
    -- on a cluster, this node's shards of campaigns (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.campaigns') LOOP
        FOR c IN EXECUTE format('SELECT x.account_id, x.campaign_id FROM %s x
                                  WHERE x.status = ''scheduled'' AND x.scheduled_at <= now()
                                  ORDER BY x.scheduled_at
                                  LIMIT 100
                                    FOR UPDATE SKIP LOCKED', shard) LOOP
            BEGIN
                PERFORM envoisms.campaign_launch(c.account_id, c.campaign_id);
                started := started + 1;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT;
                UPDATE envoisms.campaigns x
                   SET status = 'cancelled',
                       error_code = coalesce((SELECT e.code FROM envoisms.error_codes e WHERE e.sqlstate = err_state), 'INTERNAL_ERROR'),
                       error_message = left(err_message, 500)
                 WHERE x.account_id = c.account_id AND x.campaign_id = c.campaign_id;
            END;
        END LOOP;
    END LOOP;
    RETURN started;
END
$$;

-- Mark running campaigns completed once none of their messages is queued;
-- returns how many. Skips campaigns another session holds.
CREATE FUNCTION envoisms.campaigns_complete_finished() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    n int;
    completed int := 0;
    shard regclass;
BEGIN
    -- on a cluster, this node's shards of campaigns and their messages (96_distribute.sql)
    FOR shard IN SELECT * FROM envoisms.local_shards('envoisms.campaigns') LOOP
        EXECUTE format($done$
        WITH done AS (
            SELECT x.account_id, x.campaign_id FROM %1$s x
             WHERE x.status = 'running'
               AND NOT EXISTS (SELECT 1 FROM %2$s m
                                WHERE m.account_id = x.account_id AND m.campaign_id = x.campaign_id
                                  AND m.status = 'queued')
               FOR UPDATE SKIP LOCKED)
        UPDATE %1$s x SET status = 'completed', completed_at = now()
          FROM done WHERE x.account_id = done.account_id AND x.campaign_id = done.campaign_id
        $done$, shard, envoisms.colocated_shard(shard, 'envoisms.messages'));
        GET DIAGNOSTICS n = ROW_COUNT;
        completed := completed + n;
    END LOOP;
    RETURN completed;
END
$$;

-- ---- recurring campaigns (pg_cron)

-- Copy a campaign as a new draft and launch it; returns the new campaign id.
-- This is what a recurring campaign's pg_cron job runs.
CREATE FUNCTION envoisms.campaign_clone_and_launch(account_id text, campaign_id text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    id text := envoisms.new_id('cmp');
BEGIN
    SELECT * INTO c FROM envoisms.campaigns x
     WHERE x.account_id = campaign_clone_and_launch.account_id AND x.campaign_id = campaign_clone_and_launch.campaign_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    INSERT INTO envoisms.campaigns (account_id, campaign_id, name, channel, list_id, template_id, body, sender_id,
                                    buttons, metadata, status, throttle_per_minute, sandbox, api_key_id, cloned_from)
    VALUES (c.account_id, id, left(c.name || ' ' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), 200),
            c.channel, c.list_id, c.template_id, c.body, c.sender_id, c.buttons, c.metadata, 'draft',
            c.throttle_per_minute, c.sandbox, c.api_key_id, c.campaign_id);
    PERFORM envoisms.campaign_launch(c.account_id, id);
    RETURN id;
END
$$;

-- Raise feature_not_supported unless pg_cron is installed in this database.
CREATE FUNCTION envoisms.check_pg_cron() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'recurring campaigns need the pg_cron extension'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this database, then run CREATE EXTENSION pg_cron.';
    END IF;
END
$$;

-- Run a copy of the campaign on a cron schedule ("0 9 * * 1" = Mondays 09:00
-- UTC); returns the pg_cron job id. Scheduling it again replaces the schedule.
CREATE FUNCTION envoisms.campaign_schedule_recurring(account_id text, campaign_id text, cron_expr text)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    job bigint;
BEGIN
    PERFORM envoisms.check_pg_cron();
    PERFORM 1 FROM envoisms.campaigns x
     WHERE x.account_id = campaign_schedule_recurring.account_id AND x.campaign_id = campaign_schedule_recurring.campaign_id
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    IF cron_expr IS NULL OR length(cron_expr) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'cron_expr must be a cron schedule such as "0 9 * * 1"', 'cron_expr');
    END IF;
    BEGIN
        EXECUTE 'SELECT cron.schedule($1, $2, $3)'
           INTO job
          USING 'envoisms_' || campaign_id, cron_expr,
                format('SELECT envoisms.campaign_clone_and_launch(%L, %L)', account_id, campaign_id);
    EXCEPTION WHEN invalid_parameter_value OR syntax_error OR data_exception THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('cron_expr "%s" is not a valid cron schedule', left(cron_expr, 100)), 'cron_expr');
    END;
    UPDATE envoisms.campaigns x SET recurring_job_id = job, recurring_schedule = cron_expr
     WHERE x.account_id = campaign_schedule_recurring.account_id AND x.campaign_id = campaign_schedule_recurring.campaign_id;
    RETURN job;
END
$$;
COMMENT ON FUNCTION envoisms.campaign_schedule_recurring(text, text, text) IS
'Run a copy of the campaign on a cron schedule (pg_cron)';

-- Stop a recurring campaign; returns whether a schedule was removed.
CREATE FUNCTION envoisms.campaign_unschedule_recurring(account_id text, campaign_id text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    removed boolean := false;
BEGIN
    PERFORM envoisms.check_pg_cron();
    SELECT * INTO c FROM envoisms.campaigns x
     WHERE x.account_id = campaign_unschedule_recurring.account_id AND x.campaign_id = campaign_unschedule_recurring.campaign_id
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    IF c.recurring_job_id IS NOT NULL THEN
        EXECUTE 'SELECT count(*) > 0 FROM cron.job WHERE jobid = $1' INTO removed USING c.recurring_job_id;
        IF removed THEN
            EXECUTE 'SELECT cron.unschedule($1)' USING c.recurring_job_id;
        END IF;
        UPDATE envoisms.campaigns x SET recurring_job_id = NULL, recurring_schedule = NULL
         WHERE x.account_id = c.account_id AND x.campaign_id = c.campaign_id;
    END IF;
    RETURN removed;
END
$$;
COMMENT ON FUNCTION envoisms.campaign_unschedule_recurring(text, text) IS
'Stop a campaign''s recurring runs';

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_templates_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.template_list(req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_templates_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    b jsonb := req.body;
BEGIN
    RETURN envoisms.reply(201, envoisms.template_create(
        req.account_id, envoisms.body_text(b, 'name'), envoisms.body_text(b, 'body'),
        coalesce(envoisms.body_text(b, 'channel'), 'sms'), envoisms.body_text(b, 'language')));
END
$$;

CREATE FUNCTION envoisms.api_campaigns_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.campaign_list(req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_campaigns_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    b jsonb := req.body;
BEGIN
    IF b->'metadata' IS NOT NULL AND jsonb_typeof(b->'metadata') NOT IN ('object', 'null') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object of at most 8 KB', 'metadata');
    END IF;
    RETURN envoisms.reply(201, envoisms.campaign_create(
        req.account_id,
        envoisms.body_text(b, 'name'),
        envoisms.body_text(b, 'body'),
        envoisms.body_text(b, 'template_id'),
        coalesce(envoisms.body_text(b, 'channel'), 'sms'),
        envoisms.body_text(b, 'list_id'),
        envoisms.body_text(b, 'sender_id'),
        envoisms.parse_time(envoisms.body_text(b, 'scheduled_at'), 'scheduled_at'),
        nullif(b->'buttons', 'null'),
        nullif(b->'metadata', 'null'),
        req.api_key_id,
        req.sandbox));
END
$$;

CREATE FUNCTION envoisms.api_campaigns_get(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.campaign_get(req.account_id, req.id));
END
$$;

CREATE FUNCTION envoisms.api_campaigns_send(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.campaign_launch(req.account_id, req.id, req.sandbox, req.api_key_id));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('GET',  '/v1/templates',         'envoisms.api_templates_list(envoisms.api_request)',   'campaigns'),
    ('POST', '/v1/templates',         'envoisms.api_templates_create(envoisms.api_request)', 'campaigns'),
    ('GET',  '/v1/campaigns',         'envoisms.api_campaigns_list(envoisms.api_request)',   'campaigns'),
    ('POST', '/v1/campaigns',         'envoisms.api_campaigns_create(envoisms.api_request)', 'campaigns'),
    ('GET',  '/v1/campaigns/:id',     'envoisms.api_campaigns_get(envoisms.api_request)',    'campaigns'),
    ('POST', '/v1/campaigns/:id/send', 'envoisms.api_campaigns_send(envoisms.api_request)',  'campaigns');

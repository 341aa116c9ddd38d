# The gateway's static files under /console/ (src/gateway/static.c), over
# raw HTTP so that no client normalises the path: traversal in every
# spelling (../, %2e%2e, %2E%2E%2F, backslash, NUL, //), hidden files, a
# symbolic link leading out of --console-dir, an extension not served, a
# directory without index.html — all 404 with nothing of the outside file
# in the answer; the right MIME types, the CSP and security headers on every
# answer, ETag revalidation (304), HEAD, the redirects of / and /console,
# 405 for other methods, a missing console directory. Then the console's
# own files: every module parses, French and English hold the same keys and
# every key the code names, and no module writes HTML from a string.
use strict;
use warnings;

use EnvoismsTest;
use File::Temp qw(tempdir);
use PostgreSQL::Test::Utils;
use Test::More;

my $node = EnvoismsTest::node('static');
my $outside = tempdir(CLEANUP => 1);
my $dir = "$outside/console";
mkdir $dir or die;
mkdir "$dir/js" or die;
mkdir "$dir/empty" or die;
my $secret = 'SECRET-OUTSIDE-THE-CONSOLE';
sub write_file { my ($p, $t) = @_; open(my $f, '>', $p) or die "$p: $!"; print $f $t; close $f; }
write_file("$outside/secret.txt", "$secret\n");
write_file("$outside/secret.js", "$secret\n");
write_file("$dir/index.html", "<!doctype html><title>console</title>\n");
write_file("$dir/js/app.js", "export const x = 1;\n");
write_file("$dir/style.css", "body{}\n");
write_file("$dir/.hidden.js", "$secret\n");
write_file("$dir/notes.md", "$secret\n");
symlink("$outside/secret.js", "$dir/js/leak.js") or die;
symlink($outside, "$dir/up") or die;

my $gw = EnvoismsTest::start_gateway($node, args => [ '--console-dir', $dir ]);
my $get = sub {
	my ($target, %o) = @_;
	my $method = $o{method} // 'GET';
	my $extra = join('', map { "$_: $o{headers}{$_}\r\n" } sort keys %{ $o{headers} // {} });
	my ($status, $raw) = EnvoismsTest::raw_request($gw,
		"$method $target HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n$extra\r\n");
	my ($head, $body) = split(/\r\n\r\n/, $raw // '', 2);
	my %h;
	for (split(/\r\n/, $head // '')) { $h{ lc $1 } = $2 if /^([^:]+):\s*(.*)$/; }
	return ($status // 0, \%h, $body // '');
};

# ---- what is served, and how
my ($s, $h, $b) = $get->('/console/');
is($s, 200, 'GET /console/ → 200 (its index.html)');
like($b, qr/<title>console<\/title>/, '... the file');
is($h->{'content-type'}, 'text/html; charset=utf-8', '... as text/html');
like($h->{'content-security-policy'}, qr/^default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;/, 'the CSP: self only');
like($h->{'content-security-policy'}, qr/frame-ancestors 'none'; base-uri 'none'; form-action 'self'/, "... frame-ancestors 'none', base-uri, form-action");
unlike($h->{'content-security-policy'}, qr/unsafe/, '... nothing unsafe');
is($h->{'x-content-type-options'}, 'nosniff', 'X-Content-Type-Options: nosniff');
is($h->{'x-frame-options'}, 'DENY', 'X-Frame-Options: DENY');
is($h->{'referrer-policy'}, 'same-origin', 'Referrer-Policy: same-origin');
is($h->{'cache-control'}, 'no-cache', 'Cache-Control: no-cache (revalidated by ETag)');
like($h->{etag}, qr/^"[0-9a-f]+-[0-9a-f]+"$/, 'an ETag');
my $etag = $h->{etag};

($s, $h, $b) = $get->('/console/js/app.js');
is("$s $h->{'content-type'}", '200 text/javascript; charset=utf-8', 'a module: text/javascript');
($s, $h) = $get->('/console/style.css');
is("$s $h->{'content-type'}", '200 text/css; charset=utf-8', 'a style sheet: text/css');
($s, $h) = $get->('/console/index.html?lang=en');
is($s, 200, 'a query string is ignored');

($s, $h, $b) = $get->('/console/', headers => { 'If-None-Match' => $etag });
is("$s " . length($b), '304 0', 'If-None-Match with the ETag → 304, no body');
like($h->{'content-security-policy'} // '', qr/frame-ancestors/, '... with the security headers');
($s) = $get->('/console/', headers => { 'If-None-Match' => '"0-0", ' . $etag });
is($s, 304, 'the ETag in a list → 304');
($s) = $get->('/console/', headers => { 'If-None-Match' => '"0-0"' });
is($s, 200, 'another ETag → 200');
write_file("$dir/index.html", "<!doctype html><title>console v2</title>\n");
($s, $h, $b) = $get->('/console/', headers => { 'If-None-Match' => $etag });
is($s, 200, 'the file changed: the old ETag → 200');
like($b, qr/console v2/, '... with the new content');

($s, $h, $b) = $get->('/console/js/app.js', method => 'HEAD');
is("$s $h->{'content-length'} " . length($b), '200 20 0', 'HEAD: the length, no body');

for my $target ('/', '/console')
{
	($s, $h) = $get->($target);
	is("$s " . ($h->{location} // ''), '302 /console/', "GET $target → 302 /console/");
}
($s, $h, $b) = $get->('/', method => 'POST');
like($b, qr/"error"/, 'POST / is still the API\'s (an error envelope)');
($s, $h) = $get->('/console/', method => 'POST');
is("$s " . ($h->{allow} // ''), '405 GET, HEAD', 'POST /console/ → 405, Allow: GET, HEAD');
($s) = $get->('/console/js/app.js', method => 'DELETE');
is($s, 405, 'DELETE → 405');

# ---- nothing outside the directory, whatever the spelling
for my $target (
	'/console/../secret.txt', '/console/js/../../secret.js', '/console/%2e%2e/secret.js',
	'/console/%2E%2E/secret.js', '/console/%2e%2e%2fsecret.js', '/console/..%2fsecret.js',
	'/console/js/%2e%2e/%2e%2e/secret.js', '/console/..%5csecret.js', '/console/js%5c..%5c..%5csecret.js',
	'/console/js/app.js%00.html', '/console/%00', '/console/js//app.js', '/console/./index.html',
	'/console/%2e/index.html', '/console/.hidden.js', '/console/%2ehidden.js', '/console/js/leak.js',
	'/console/up/secret.js', '/console/notes.md', '/console/empty/', '/console/missing.js',
	'/console/%zz.js', '/console/%e9.js', '/console/js/app.js%2f')
{
	($s, $h, $b) = $get->($target);
	ok($s == 404 || $s == 400, "$target → 404 (or 400)") or diag("got $s");
	unlike($b, qr/$secret/, "... nothing of the file");
	like($h->{'content-security-policy'} // 'n/a', qr/frame-ancestors 'none'|n\/a/, '... headers as always') if $s == 404;
}

EnvoismsTest::stop_gateway($gw);

# ---- no console directory: 404, the gateway still serves the API
$gw = EnvoismsTest::start_gateway($node, args => [ '--console-dir', "$outside/nowhere" ]);
($s) = $get->('/console/');
is($s, 404, 'a missing --console-dir: /console/ → 404');
($s) = $get->('/healthz');
is($s, 200, '... and the gateway runs');
like(slurp_file($gw->{log}), qr/cannot open the console directory/, '... having said why at start');
EnvoismsTest::stop_gateway($gw);

# ---- the console's own files
my $console = "$EnvoismsTest::ROOT/console";
my @modules = split /\n/, `find "$console" -name '*.js' | sort`;
cmp_ok(scalar @modules, '>=', 15, scalar(@modules) . ' modules in console/');
my $tmp = tempdir(CLEANUP => 1);
SKIP:
{
	skip 'node is not installed', scalar @modules unless `node --version 2>/dev/null`;
	for my $m (@modules)
	{
		my $copy = "$tmp/check.mjs";
		write_file($copy, slurp_file($m));
		my $out = `node --check "$copy" 2>&1`;
		is($?, 0, "$m parses as an ES module") or diag($out);
	}
}
my $all = join("\n", map { slurp_file($_) } @modules);
my @html_sinks = grep { !m{^\s*//} && /\.innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function/ }
  split /\n/, $all;
is_deeply(\@html_sinks, [], 'no module writes HTML from a string or evaluates text (comments aside)');
unlike(slurp_file("$console/index.html"), qr/<script>|\bstyle=|\bon[a-z]+=/, 'index.html: no inline script, style or handler');
my %keys;
for my $lang (qw(fr en))
{
	my $text = slurp_file("$console/i18n/$lang.js");
	$keys{$lang} = { map { $_ => 1 } $text =~ /^\s+"([^"]+)":/mg };
}
is_deeply([ sort keys %{ $keys{en} } ], [ sort keys %{ $keys{fr} } ], 'en.js and fr.js hold the same keys');
# literal keys only: t('a.b') or t('a.b', vars), not the prefix of t('status.' + s)
my %used = map { $_ => 1 } $all =~ /\bt\('([a-z_0-9]+\.[a-z_0-9.\-]+)'\s*[,)]/g;
my @missing = grep { !$keys{fr}{$_} } sort keys %used;
is_deeply(\@missing, [], scalar(keys %used) . ' keys named in the code, all translated');

done_testing();

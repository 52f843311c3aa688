-- url, querystring, path: pure Lua, checked in-process. The url.parse and querystring cases
-- are translated from Node's own tables (test/parallel/test-url-parse-format.js,
-- test-querystring.js, test-path-*.js).
local url = require('url')
local qs = require('querystring')
local path = require('path')

local FIELDS = { 'protocol', 'slashes', 'auth', 'host', 'port', 'hostname', 'hash', 'search', 'query',
  'pathname', 'path', 'href' }

-- { input, expected fields (absent = nil) }
local parseCases = {
  { '//some_path', { href = '//some_path', pathname = '//some_path', path = '//some_path' } },
  { 'http:\\\\evil-phisher\\foo.html#h\\a\\s\\h', { protocol = 'http:', slashes = true, host = 'evil-phisher',
    hostname = 'evil-phisher', pathname = '/foo.html', path = '/foo.html', hash = '#h%5Ca%5Cs%5Ch',
    href = 'http://evil-phisher/foo.html#h%5Ca%5Cs%5Ch' } },
  { 'http:\\\\evil-phisher\\foo.html?json="\\"foo\\""#h\\a\\s\\h', { protocol = 'http:', slashes = true,
    host = 'evil-phisher', hostname = 'evil-phisher', pathname = '/foo.html',
    search = '?json=%22%5C%22foo%5C%22%22', query = 'json=%22%5C%22foo%5C%22%22',
    path = '/foo.html?json=%22%5C%22foo%5C%22%22', hash = '#h%5Ca%5Cs%5Ch',
    href = 'http://evil-phisher/foo.html?json=%22%5C%22foo%5C%22%22#h%5Ca%5Cs%5Ch' } },
  { 'http:\\\\evil-phisher\\foo.html#h\\a\\s\\h?blarg', { protocol = 'http:', slashes = true,
    host = 'evil-phisher', hostname = 'evil-phisher', pathname = '/foo.html', path = '/foo.html',
    hash = '#h%5Ca%5Cs%5Ch?blarg', href = 'http://evil-phisher/foo.html#h%5Ca%5Cs%5Ch?blarg' } },
  { 'HTTP://www.example.com/', { href = 'http://www.example.com/', protocol = 'http:', slashes = true,
    host = 'www.example.com', hostname = 'www.example.com', pathname = '/', path = '/' } },
  { 'HTTP://www.example.com', { href = 'http://www.example.com/', protocol = 'http:', slashes = true,
    host = 'www.example.com', hostname = 'www.example.com', pathname = '/', path = '/' } },
  { 'http://www.ExAmPlE.com/', { href = 'http://www.example.com/', protocol = 'http:', slashes = true,
    host = 'www.example.com', hostname = 'www.example.com', pathname = '/', path = '/' } },
  { 'http://user:pw@www.ExAmPlE.com/', { href = 'http://user:pw@www.example.com/', protocol = 'http:',
    slashes = true, auth = 'user:pw', host = 'www.example.com', hostname = 'www.example.com', pathname = '/',
    path = '/' } },
  { 'http://USER:PW@www.ExAmPlE.com/', { href = 'http://USER:PW@www.example.com/', protocol = 'http:',
    slashes = true, auth = 'USER:PW', host = 'www.example.com', hostname = 'www.example.com', pathname = '/',
    path = '/' } },
  { 'http://user@www.example.com/', { href = 'http://user@www.example.com/', protocol = 'http:',
    slashes = true, auth = 'user', host = 'www.example.com', hostname = 'www.example.com', pathname = '/',
    path = '/' } },
  { 'http://user%3Apw@www.example.com/', { href = 'http://user:pw@www.example.com/', protocol = 'http:',
    slashes = true, auth = 'user:pw', host = 'www.example.com', hostname = 'www.example.com', pathname = '/',
    path = '/' } },
  { "http://x.com/path?that's#all, folks", { href = 'http://x.com/path?that%27s#all,%20folks',
    protocol = 'http:', slashes = true, host = 'x.com', hostname = 'x.com', search = '?that%27s',
    query = 'that%27s', pathname = '/path', hash = '#all,%20folks', path = '/path?that%27s' } },
  { 'HTTP://X.COM/Y', { href = 'http://x.com/Y', protocol = 'http:', slashes = true, host = 'x.com',
    hostname = 'x.com', pathname = '/Y', path = '/Y' } },
  { ' http://www.example.com/', { href = 'http://www.example.com/', protocol = 'http:', slashes = true,
    host = 'www.example.com', hostname = 'www.example.com', pathname = '/', path = '/' } },
  { 'http://x.y.com+a/b/c', { href = 'http://x.y.com+a/b/c', protocol = 'http:', slashes = true,
    host = 'x.y.com+a', hostname = 'x.y.com+a', pathname = '/b/c', path = '/b/c' } },
  { 'HtTp://x.y.cOm;a/b/c?d=e#f g<h>i', { href = 'http://x.y.com/;a/b/c?d=e#f%20g%3Ch%3Ei',
    protocol = 'http:', slashes = true, host = 'x.y.com', hostname = 'x.y.com', pathname = ';a/b/c',
    search = '?d=e', query = 'd=e', hash = '#f%20g%3Ch%3Ei', path = ';a/b/c?d=e' } },
  { 'HtTp://x.y.cOm;A/b/c?d=e#f g<h>i', { href = 'http://x.y.com/;A/b/c?d=e#f%20g%3Ch%3Ei',
    protocol = 'http:', slashes = true, host = 'x.y.com', hostname = 'x.y.com', pathname = ';A/b/c',
    search = '?d=e', query = 'd=e', hash = '#f%20g%3Ch%3Ei', path = ';A/b/c?d=e' } },
  { 'http://x...y...#p', { href = 'http://x...y.../#p', protocol = 'http:', slashes = true, host = 'x...y...',
    hostname = 'x...y...', hash = '#p', pathname = '/', path = '/' } },
  { 'http://x/p/"quoted"', { href = 'http://x/p/%22quoted%22', protocol = 'http:', slashes = true, host = 'x',
    hostname = 'x', pathname = '/p/%22quoted%22', path = '/p/%22quoted%22' } },
  { '<http://goo.corn/bread> Is a URL!', { href = '%3Chttp://goo.corn/bread%3E%20Is%20a%20URL!',
    pathname = '%3Chttp://goo.corn/bread%3E%20Is%20a%20URL!', path = '%3Chttp://goo.corn/bread%3E%20Is%20a%20URL!' } },
  { 'http://www.narwhaljs.org/blog/categories?id=news', { href = 'http://www.narwhaljs.org/blog/categories?id=news',
    protocol = 'http:', slashes = true, host = 'www.narwhaljs.org', hostname = 'www.narwhaljs.org',
    search = '?id=news', query = 'id=news', pathname = '/blog/categories', path = '/blog/categories?id=news' } },
  { 'http://mt0.google.com/vt/lyrs=m@114???&hl=en&src=api&x=2&y=2&z=3&s=', {
    href = 'http://mt0.google.com/vt/lyrs=m@114???&hl=en&src=api&x=2&y=2&z=3&s=', protocol = 'http:',
    slashes = true, host = 'mt0.google.com', hostname = 'mt0.google.com', search = '???&hl=en&src=api&x=2&y=2&z=3&s=',
    query = '??&hl=en&src=api&x=2&y=2&z=3&s=', pathname = '/vt/lyrs=m@114',
    path = '/vt/lyrs=m@114???&hl=en&src=api&x=2&y=2&z=3&s=' } },
  { 'file:///etc/passwd', { href = 'file:///etc/passwd', slashes = true, protocol = 'file:', pathname = '/etc/passwd',
    hostname = '', host = '', path = '/etc/passwd' } },
  { 'file://localhost/etc/passwd', { href = 'file://localhost/etc/passwd', protocol = 'file:', slashes = true,
    pathname = '/etc/passwd', hostname = 'localhost', host = 'localhost', path = '/etc/passwd' } },
  { 'http:/baz/../foo/bar', { href = 'http:/baz/../foo/bar', protocol = 'http:', pathname = '/baz/../foo/bar',
    path = '/baz/../foo/bar' } },
  { 'http://user:pass@example.com:8000/foo/bar?baz=quux#frag', {
    href = 'http://user:pass@example.com:8000/foo/bar?baz=quux#frag', protocol = 'http:', slashes = true,
    host = 'example.com:8000', auth = 'user:pass', port = '8000', hostname = 'example.com', hash = '#frag',
    search = '?baz=quux', query = 'baz=quux', pathname = '/foo/bar', path = '/foo/bar?baz=quux' } },
  { '//user:pass@example.com:8000/foo/bar?baz=quux#frag', {
    href = '//user:pass@example.com:8000/foo/bar?baz=quux#frag', slashes = true, host = 'example.com:8000',
    auth = 'user:pass', port = '8000', hostname = 'example.com', hash = '#frag', search = '?baz=quux',
    query = 'baz=quux', pathname = '/foo/bar', path = '/foo/bar?baz=quux' } },
  { '/foo/bar?baz=quux#frag', { href = '/foo/bar?baz=quux#frag', hash = '#frag', search = '?baz=quux',
    query = 'baz=quux', pathname = '/foo/bar', path = '/foo/bar?baz=quux' } },
  { 'http:/foo/bar?baz=quux#frag', { href = 'http:/foo/bar?baz=quux#frag', protocol = 'http:', hash = '#frag',
    search = '?baz=quux', query = 'baz=quux', pathname = '/foo/bar', path = '/foo/bar?baz=quux' } },
  { 'mailto:foo@bar.com?subject=hello', { href = 'mailto:foo@bar.com?subject=hello', protocol = 'mailto:',
    host = 'bar.com', auth = 'foo', hostname = 'bar.com', search = '?subject=hello', query = 'subject=hello',
    path = '?subject=hello' } },
  { "javascript:alert('hello');", { href = "javascript:alert('hello');", protocol = 'javascript:',
    pathname = "alert('hello');", path = "alert('hello');" } },
  { 'xmpp:isaacschlueter@jabber.org', { href = 'xmpp:isaacschlueter@jabber.org', protocol = 'xmpp:',
    host = 'jabber.org', auth = 'isaacschlueter', hostname = 'jabber.org' } },
  { 'http://atpass:foo%40bar@127.0.0.1:8080/path?search=foo#bar', {
    href = 'http://atpass:foo%40bar@127.0.0.1:8080/path?search=foo#bar', protocol = 'http:', slashes = true,
    host = '127.0.0.1:8080', auth = 'atpass:foo@bar', hostname = '127.0.0.1', port = '8080', pathname = '/path',
    search = '?search=foo', query = 'search=foo', hash = '#bar', path = '/path?search=foo' } },
  { 'svn+ssh://foo/bar', { href = 'svn+ssh://foo/bar', host = 'foo', hostname = 'foo', protocol = 'svn+ssh:',
    pathname = '/bar', path = '/bar', slashes = true } },
  { 'dash-test:foo/bar', { href = 'dash-test:foo/bar', host = 'foo', hostname = 'foo', protocol = 'dash-test:',
    pathname = '/bar', path = '/bar' } },
  { 'dot.test://foo/bar', { href = 'dot.test://foo/bar', host = 'foo', hostname = 'foo', protocol = 'dot.test:',
    pathname = '/bar', path = '/bar', slashes = true } },
  { 'http://bucket_name.s3.amazonaws.com/image.jpg', { protocol = 'http:', slashes = true,
    host = 'bucket_name.s3.amazonaws.com', hostname = 'bucket_name.s3.amazonaws.com', pathname = '/image.jpg',
    href = 'http://bucket_name.s3.amazonaws.com/image.jpg', path = '/image.jpg' } },
  { 'git+http://github.com/joyent/node.git', { protocol = 'git+http:', slashes = true, host = 'github.com',
    hostname = 'github.com', pathname = '/joyent/node.git', path = '/joyent/node.git',
    href = 'git+http://github.com/joyent/node.git' } },
  { 'local1@domain1', { pathname = 'local1@domain1', path = 'local1@domain1', href = 'local1@domain1' } },
  { 'www.example.com', { href = 'www.example.com', pathname = 'www.example.com', path = 'www.example.com' } },
  { '[fe80::1]', { href = '[fe80::1]', pathname = '[fe80::1]', path = '[fe80::1]' } },
  { 'coap://[FEDC:BA98:7654:3210:FEDC:BA98:7654:3210]', { protocol = 'coap:', slashes = true,
    host = '[fedc:ba98:7654:3210:fedc:ba98:7654:3210]', hostname = 'fedc:ba98:7654:3210:fedc:ba98:7654:3210',
    href = 'coap://[fedc:ba98:7654:3210:fedc:ba98:7654:3210]/', pathname = '/', path = '/' } },
  { 'http://user:password@[3ffe:2a00:100:7031::1]:8080', { protocol = 'http:', slashes = true,
    auth = 'user:password', host = '[3ffe:2a00:100:7031::1]:8080', port = '8080', hostname = '3ffe:2a00:100:7031::1',
    href = 'http://user:password@[3ffe:2a00:100:7031::1]:8080/', pathname = '/', path = '/' } },
  { 'coap://u:p@[::192.9.5.5]:61616/.well-known/r?n=Temperature', { protocol = 'coap:', slashes = true,
    auth = 'u:p', host = '[::192.9.5.5]:61616', port = '61616', hostname = '::192.9.5.5',
    href = 'coap://u:p@[::192.9.5.5]:61616/.well-known/r?n=Temperature', search = '?n=Temperature',
    query = 'n=Temperature', pathname = '/.well-known/r', path = '/.well-known/r?n=Temperature' } },
}

describe('url.parse', function()
  for _, c in ipairs(parseCases) do
    it('parses ' .. c[1], function()
      local u = url.parse(c[1])
      local got, want = {}, {}
      for _, f in ipairs(FIELDS) do
        got[f], want[f] = u[f], c[2][f]
      end
      assert.are.same(want, got)
      -- format() of the parse gives the href back.
      assert.are.equal(c[2].href, url.format(u))
    end)
  end

  it('parses the query into a table when asked, lists for repeated keys', function()
    local u = url.parse('/search?q=a+b%21&tag=x&tag=y', true)
    assert.are.same({ q = 'a b!', tag = { 'x', 'y' } }, u.query)
    assert.are.equal('?q=a+b%21&tag=x&tag=y', u.search)
    assert.are.equal('/search', u.pathname)
    local v = url.parse('http://example.com/nothing', true)
    assert.are.same({}, v.query)
    assert.is_nil(v.search)
  end)

  it('treats //host as a host only with slashesDenoteHost', function()
    assert.are.equal('//foo/bar', url.parse('//foo/bar').pathname)
    local u = url.parse('//foo/bar', false, true)
    assert.are.equal('foo', u.host)
    assert.are.equal('/bar', u.pathname)
  end)

  it('formats objects (Node format table cases)', function()
    assert.are.equal('http://example.com/?a=b&c=d', url.format({ protocol = 'http', hostname = 'example.com',
      pathname = '/', query = { a = 'b', c = 'd' } }))
    assert.are.equal('http://[::1]:8080/x', url.format({ protocol = 'http:', hostname = '::1', port = 8080,
      pathname = '/x' }))
    assert.are.equal('file:///etc/passwd', url.format({ protocol = 'file', pathname = '/etc/passwd' }))
    assert.are.equal('/a%3Fb%23c?x#y', url.format({ pathname = '/a?b#c', search = 'x', hash = 'y' }))
  end)

  it('rejects a non-string with a coded error', function()
    assert.has_error(function()
      url.parse(42)
    end, 'ERR_INVALID_ARG_TYPE: the "url" argument must be a string, got number')
  end)
end)

-- { query string, canonical stringify (keys sorted), parsed }
local qsCases = {
  { 'foo=918854443121279438895193', 'foo=918854443121279438895193', { foo = '918854443121279438895193' } },
  { 'foo=bar', 'foo=bar', { foo = 'bar' } },
  { 'foo=bar&foo=quux', 'foo=bar&foo=quux', { foo = { 'bar', 'quux' } } },
  { 'foo=1&bar=2', 'bar=2&foo=1', { foo = '1', bar = '2' } },
  { 'my+weird+field=q1%212%22%27w%245%267%2Fz8%29%3F', "my%20weird%20field=q1!2%22'w%245%267%2Fz8)%3F",
    { ['my weird field'] = 'q1!2"\'w$5&7/z8)?' } },
  { 'foo%3Dbaz=bar', 'foo%3Dbaz=bar', { ['foo=baz'] = 'bar' } },
  { 'foo=baz=bar', 'foo=baz%3Dbar', { foo = 'baz=bar' } },
  { 'str=foo&arr=1&arr=2&arr=3&somenull=&undef=', 'arr=1&arr=2&arr=3&somenull=&str=foo&undef=',
    { str = 'foo', arr = { '1', '2', '3' }, somenull = '', undef = '' } },
  { ' foo = bar ', '%20foo%20=%20bar%20', { [' foo '] = ' bar ' } },
  { 'foo=%zx', 'foo=%25zx', { foo = '%zx' } },
  { 'foo=%EF%BF%BD', 'foo=%EF%BF%BD', { foo = '\239\191\189' } },
  { 'hasOwnProperty=x&toString=foo&valueOf=bar&__defineGetter__=baz',
    '__defineGetter__=baz&hasOwnProperty=x&toString=foo&valueOf=bar',
    { hasOwnProperty = 'x', toString = 'foo', valueOf = 'bar', __defineGetter__ = 'baz' } },
  { 'foo&bar=baz', 'bar=baz&foo=', { foo = '', bar = 'baz' } },
  { '', '', {} },
}
local qsColonCases = {
  { 'foo:bar', 'foo:bar', { foo = 'bar' } },
  { 'foo:bar;foo:quux', 'foo:bar;foo:quux', { foo = { 'bar', 'quux' } } },
  { 'foo:1&bar:2;baz:quux', 'baz:quux;foo:1%26bar%3A2', { foo = '1&bar:2', baz = 'quux' } },
  { 'foo%3Abaz:bar', 'foo%3Abaz:bar', { ['foo:baz'] = 'bar' } },
  { 'foo:baz:bar', 'foo:baz%3Abar', { foo = 'baz:bar' } },
}

describe('querystring', function()
  it('parses and stringifies Node\'s test cases', function()
    for _, c in ipairs(qsCases) do
      assert.are.same(c[3], qs.parse(c[1]), c[1])
      assert.are.equal(c[2], qs.stringify(c[3]), c[1])
    end
  end)

  it('uses other separators', function()
    for _, c in ipairs(qsColonCases) do
      assert.are.same(c[3], qs.parse(c[1], ';', ':'), c[1])
      assert.are.equal(c[2], qs.stringify(c[3], ';', ':'), c[1])
    end
  end)

  it('skips empty pieces and keeps empty keys (Node\'s edge cases)', function()
    assert.are.same({}, qs.parse('&&'))
    assert.are.same({ [''] = '' }, qs.parse('&='))
    assert.are.same({ [''] = { '', '' } }, qs.parse('&=&='))
    assert.are.same({ [' '] = '' }, qs.parse('+'))
    assert.are.same({ [''] = ' ' }, qs.parse('=+'))
    assert.are.same({ a = '', b = '' }, qs.parse('a&&b'))
    assert.are.same({ a = '=b' }, qs.parse('a==b'))
    assert.are.same({}, qs.parse(nil))
  end)

  it('stringifies weird values as Node does', function()
    assert.are.equal('f=false&t=true', qs.stringify({ f = false, t = true }))
    assert.are.equal('fn=', qs.stringify({ fn = print }))
    assert.are.equal('foo=0', qs.stringify({ foo = 0 }))
    assert.are.equal('foo=3', qs.stringify({ foo = 3 }))
    assert.are.equal('foo=-72.42', qs.stringify({ foo = -72.42 }))
    assert.are.equal('foo=', qs.stringify({ foo = 0 / 0 }))
    assert.are.equal('foo=', qs.stringify({ foo = math.huge }))
    assert.are.equal('', qs.stringify({ a = {}, b = {} }))
    assert.are.equal('a=b&q=x%3Dy%26y%3Dz', qs.stringify({ a = 'b', q = qs.stringify({ x = 'y', y = 'z' }) }))
  end)

  it('limits keys with maxKeys (0 = no limit)', function()
    local n = 0
    for _ in pairs(qs.parse('a=1&b=1&c=1', nil, nil, { maxKeys = 1 })) do
      n = n + 1
    end
    assert.are.equal(1, n)
    local t = {}
    for i = 1, 2000 do
      t['k' .. i] = i
    end
    n = 0
    for _ in pairs(qs.parse(qs.stringify(t), nil, nil, { maxKeys = 0 })) do
      n = n + 1
    end
    assert.are.equal(2000, n)
  end)

  it('unescapes to bytes, custom decoders and encoders', function()
    local b = qs.unescapeBuffer('%d3%f2Ug%1f6v%24%5e%98%cb%0d%ac%a2%2f%9d%eb%d8%a2%e6')
    assert.are.same({ 0xd3, 0xf2, 0x55, 0x67, 0x1f, 0x36, 0x76, 0x24, 0x5e, 0x98, 0xcb, 0x0d, 0xac, 0xa2, 0x2f,
      0x9d, 0xeb, 0xd8, 0xa2, 0xe6 }, { b:byte(1, -1) })
    assert.are.equal('a+b', qs.unescape('a+b'))
    assert.are.equal('a b', qs.unescape('a+b', true))
    assert.are.same({ aa = 'aa', bb = 'bb', cc = 'cc' }, qs.parse('a=a&b=b&c=c', nil, nil, {
      decodeURIComponent = function(s)
        return s .. s
      end,
    }))
    assert.are.equal('a=a&b=b&c=c', qs.stringify({ aa = 'aa', bb = 'bb', cc = 'cc' }, nil, nil, {
      encodeURIComponent = function(s)
        return s:sub(1, 1)
      end,
    }))
    assert.are.equal("%20!'()*-._~%2F%C3%A9", qs.escape(" !'()*-._~/\195\169"))
  end)

  it('rejects a non-string to parse with a coded error', function()
    assert.has_error(function()
      qs.parse(12)
    end, 'ERR_INVALID_ARG_TYPE: querystring.parse needs a string, got number')
  end)
end)

describe('path', function()
  it('joins, normalizes and resolves (Node\'s POSIX cases)', function()
    assert.are.equal('/foo/bar/baz/asdf', path.join('/foo', 'bar', 'baz/asdf', 'quux', '..'))
    assert.are.equal('..', path.join('foo', '', '..', '..'))
    assert.are.equal('.', path.join(''))
    assert.are.equal('/foo/bar/baz/asdf', path.normalize('/foo/bar//baz/asdf/quux/..'))
    assert.are.equal('./', path.normalize('./'))
    assert.are.equal('../../x', path.normalize('../../x'))
    assert.are.equal('/', path.normalize('/../..'))
    assert.are.equal('/foo/bar/baz', path.resolve('/foo/bar', './baz'))
    assert.are.equal('/tmp/file', path.resolve('/foo/bar', '/tmp/file/'))
    assert.are.equal(process.cwd() .. '/a/b', path.resolve('a', 'b'))
    assert.are.equal('../../impl/bbb', path.relative('/data/orandea/test/aaa', '/data/orandea/impl/bbb'))
    assert.are.equal('', path.relative('/a/b', '/a/b/'))
    assert.is_true(path.isAbsolute('/x'))
    assert.is_false(path.isAbsolute('x/'))
    assert.are.equal('/', path.sep)
  end)

  it('splits names (dirname, basename, extname, parse, format)', function()
    assert.are.equal('/foo/bar/baz/asdf', path.dirname('/foo/bar/baz/asdf/quux'))
    assert.are.equal('/', path.dirname('/a'))
    assert.are.equal('.', path.dirname('a'))
    assert.are.equal('/a', path.dirname('/a/b/'))
    assert.are.equal('quux', path.basename('/foo/bar/baz/asdf/quux.html', '.html'))
    assert.are.equal('b', path.basename('/a/b/'))
    for input, ext in pairs({ ['index.html'] = '.html', ['index.coffee.md'] = '.md', ['index.'] = '.',
      index = '', ['.index'] = '', ['.index.md'] = '.md', ['..'] = '', ['...'] = '.', ['..file'] = '.file',
      ['file.ext/'] = '.ext' }) do
      assert.are.equal(ext, path.extname(input), input)
    end
    assert.are.same({ root = '/', dir = '/home/user/dir', base = 'file.txt', ext = '.txt', name = 'file' },
      path.parse('/home/user/dir/file.txt'))
    assert.are.equal('/home/user/dir/file.txt', path.format({ dir = '/home/user/dir', base = 'file.txt' }))
    assert.are.equal('/file.txt', path.format({ root = '/', name = 'file', ext = '.txt' }))
  end)

  it('rejects non-strings with a coded error', function()
    assert.has_error(function()
      path.join('a', 1)
    end, 'ERR_INVALID_ARG_TYPE: the "path" argument must be a string, got number')
  end)
end)

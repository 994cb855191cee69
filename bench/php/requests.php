<?php
/* A request loop for the "programs" group of run.py: php -n with USE_ZEND_ALLOC=0, so every
 * allocation of the engine goes to malloc (the preloaded allocator). Each request decodes a JSON
 * payload, builds objects and nested arrays, renders a page by string building, serializes a
 * session, sorts and groups, and drops it all at its end. Deterministic: prints a checksum.
 *   php -n requests.php [requests]   (default 40) */
final class Item
{
    public array $tags = [];
    public function __construct(public int $id, public string $name, public float $price) {}
    public function label(): string
    {
        return sprintf('%05d:%s[%s]', $this->id, strtoupper($this->name), implode('|', $this->tags));
    }
}

$requests = (int) ($argv[1] ?? 40);
$payload = json_encode(array_map(
    fn($i) => ['id' => $i, 'name' => "item-$i-" . str_repeat(chr(97 + $i % 26), $i % 37),
               'price' => $i * 0.75, 'tags' => range(0, $i % 9)],
    range(0, 2999)
));
$checksum = 0;
for ($r = 0; $r < $requests; $r++) {
    $items = [];
    foreach (json_decode($payload, true) as $row) {
        $item = new Item($row['id'] + $r, $row['name'], $row['price']);
        $item->tags = array_map(fn($t) => "t$t", $row['tags']);
        $items[] = $item;
    }
    usort($items, fn($a, $b) => strcmp($b->name, $a->name) ?: $a->id <=> $b->id);
    $groups = [];
    foreach ($items as $item) {
        $groups[strlen($item->name) % 17][] = $item;
    }
    $html = '';
    foreach ($groups as $len => $group) {
        $html .= "<h2>$len</h2><ul>";
        foreach ($group as $item) {
            $html .= '<li>' . htmlspecialchars($item->label()) . '</li>';
        }
        $html .= '</ul>';
    }
    $words = explode('|', str_replace(['<', '>', ':'], '|', $html));
    $counts = array_count_values(array_filter($words, fn($w) => $w !== ''));
    arsort($counts);
    $session = serialize(['user' => $r, 'top' => array_slice($counts, 0, 50, true), 'items' => array_slice($items, 0, 200)]);
    $back = unserialize($session);
    $checksum = ($checksum * 31 + crc32($html) + strlen($session) + count($back['items'])) % 1000000007;
    unset($items, $groups, $html, $words, $counts, $session, $back);
}
echo $requests, ' requests, checksum ', $checksum, "\n";

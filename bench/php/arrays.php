<?php
/* Array-heavy work: building, sorting, mapping and dropping arrays of every size, nested arrays and
 * long strings (huge blocks), over many rounds, as data-processing scripts do. */
$checksum = 0;
for ($round = 0; $round < 12; $round++) {
    $a = [];
    for ($i = 0; $i < 200000; $i++) {
        $a[] = ($i * 7919 + $round) % 100003;
    }
    sort($a);
    $b = array_map(fn($x) => $x * 2, array_filter($a, fn($x) => $x % 3 == 0));
    $assoc = [];
    foreach ($a as $i => $x) {
        $assoc["k$x"][] = $i;
    }
    $nested = [];
    for ($i = 0; $i < 2000; $i++) {
        $nested[] = ['id' => $i, 'children' => range(0, $i % 50), 'label' => str_repeat('x', $i % 300)];
    }
    usort($nested, fn($p, $q) => count($q['children']) <=> count($p['children']));
    $big = str_repeat(implode(',', array_slice($a, 0, 1000)), 200);
    $checksum += count($b) + count($assoc) + strlen($big) + $nested[0]['id'];
    unset($a, $b, $assoc, $nested, $big);
}
echo $checksum, "\n";
